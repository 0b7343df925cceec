"""The training loop: read it top to bottom.

Every step is a pure function of (weights, optimizer state, global step): the data order comes from a
seeded sampler, and the random state (augmentation, dropout) is re-seeded from the step number and the
rank (:func:`step_seed`; rank 0 draws what a single process draws). That is
what makes resume exact: the last checkpoint holds weights, optimizer state and step counters, and a
resumed run skips the batches it already saw and continues bit for bit.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from distill.data.views import ConsistentAugment
from distill.distiller import Distiller, DistillStep
from distill.errors import DistillError, TrainingInterrupted, is_allocation_failure
from distill.io import remove_stale_temporaries, write_error, write_json
from distill.tasks.base import TeacherPredictions
from distill.train.callbacks import CALLBACKS, Callback, Callbacks
from distill.train.checkpoint import (
    EMA_PREFIX,
    CheckpointStore,
    model_tensors,
    optimizer_state_from_json,
    save_model,
    state_tensors,
    unflatten_state,
)
from distill.train.config import TrainConfig
from distill.train.distributed import (
    DistInfo,
    any_rank,
    barrier,
    broadcast_buffers,
    broadcast_object,
    describe_device,
    gather_objects,
    init_distributed,
    pick_device,
)
from distill.train.ema import WeightEMA
from distill.train.logging import MetricsLogger, format_values, make_progress, truncate_metrics
from distill.train.nonfinite import NonFiniteGuard, nonfinite
from distill.train.optim import (
    OptimizerSpec,
    apply_step_settings,
    build_optimizer,
    warmup_steps,
)
from distill.train.precision import (
    MAX_SCALER_SKIPS,
    autocast_dtype,
    channels_last_inputs,
    make_scaler,
    prepare_models,
)
from distill.train.rundir import RunLock
from distill.train.sampling import (
    epoch_loader,
    item_lengths,
    make_loader,
    seed_everything,
    user_loader,
)

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

RANK_STRIDE = 0x9E3779B97F4A7C15  # odd, ~2**63: rank r's seeds never meet rank 0's of another step


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The global RNG's seed for ``step`` on ``rank``: ``seed * 1_000_003 + step`` on rank 0 (one process
    draws as it always did), offset per rank so that ranks do not repeat each other's dropout masks and
    negatives; taken modulo 2**64, the range ``torch.manual_seed`` accepts."""
    return (seed * 1_000_003 + step + rank * RANK_STRIDE) % 2**64


class Trainer:
    """Trains ``distiller``'s student (and projectors) on ``train_data``; evaluates on ``val_data``.

    ``train_data``/``val_data`` are datasets (the trainer shards and orders them, which makes resume and
    ``torchrun`` exact) or ready DataLoaders (used as given). Artefacts go to ``run_dir``:
    ``metrics.jsonl``, ``checkpoints/`` (see :mod:`distill.train.checkpoint`), ``summary.json`` and,
    when training completes, ``model.safetensors`` (the final student as a plain state dict).

    ``optimizer`` is a function building any ``torch.optim`` optimizer from the trainable ``(name,
    parameter)`` pairs, or parameter groups (``[{"params": "student.backbone", "lr": 1e-4}]``); either
    way the schedule scales each group's own rate (see :mod:`distill.train.optim`). ``callbacks`` run at
    the loop's events after those ``config.callbacks`` names (see :mod:`distill.train.callbacks`).
    ``recipe`` (the resolved recipe as JSON values) goes to the loggers that record it (W&B, MLflow).
    """

    _saved_last: str | None = None  # the state of the newest 'last' checkpoint written or resumed

    def __init__(
        self,
        distiller: Distiller,
        train_data: Dataset | DataLoader,
        val_data: Dataset | DataLoader | None = None,
        config: TrainConfig | None = None,
        run_dir: str | Path | None = None,
        augment: Augment | None = None,
        console: Console | None = None,
        optimizer: OptimizerSpec = None,
        callbacks: Sequence[Callback] = (),
        recipe: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = cfg = config or TrainConfig()
        if optimizer is not None and cfg.param_groups:
            raise DistillError(
                "parameter groups come from optimizer= or from train.param_groups, not both; "
                "drop train.param_groups or put those groups in optimizer="
            )
        self.optimizer_spec = optimizer
        self.recipe = dict(recipe) if recipe is not None else None
        self.dist: DistInfo = init_distributed(cfg.device)
        self.device = pick_device(cfg.device, self.dist)
        self.console = console or Console()
        self.run_dir = Path(run_dir) if run_dir else None
        self.distiller = distiller.to(self.device)
        self.task = distiller.task
        self.augment = augment
        self.train_data, self.val_data = train_data, val_data
        parts = self.dist.world_size * cfg.grad_accum_steps  # processes x micro-batches per step
        if cfg.batch_size % parts:
            raise DistillError(
                f"batch_size {cfg.batch_size} does not split over {self.dist.world_size} processes x "
                f"grad_accum_steps {cfg.grad_accum_steps}; use a multiple of {parts}"
            )
        self.local_batch = cfg.batch_size // parts  # one micro-batch of one rank
        # a DataLoader under torchrun must shard: refused here, not at fit()
        if isinstance(train_data, DataLoader):
            user_loader(train_data, self.dist, 0)
        # train.group_by_length: per-item lengths, read once (a text dataset tokenises its texts here)
        self.lengths = item_lengths(train_data) if cfg.group_by_length else None
        self.optimizer: torch.optim.Optimizer | None = None
        self.ema: WeightEMA | None = None  # train.ema: the average that is evaluated and saved
        teacher = self.distiller.teacher  # frozen: its validation top-1 is worked out once
        self.teacher_predictions = TeacherPredictions(teacher) if teacher is not None else None
        self.global_step = 0
        self.epoch = 0
        self.epoch_step = 0
        self.best: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.guard = NonFiniteGuard(cfg, self.console, self.dist.is_main)  # train.on_nonfinite
        self.scaler = make_scaler(cfg, self.device)  # precision: fp16 (disabled otherwise)
        self.scaler_skipped = 0  # fp16 steps the scaler skipped (gradient overflow), in all
        self._scaler_in_a_row = 0
        self._logger: MetricsLogger | None = None
        self._prepared = False
        self._noted_deterministic = False
        self._stop_after: int | None = None
        self._stop_signal: int | None = None  # SIGINT/SIGTERM received during fit()
        self._accept_stop = False  # the loop runs: a signal stops it at the next step boundary
        # called with the tag ("last", "best") after each checkpoint is saved (rank 0)
        self.after_checkpoint: list[Callable[[str], None]] = []
        built = [CALLBACKS.create(spec.name, spec.options) for spec in cfg.callbacks]
        self.callbacks = Callbacks([*built, *callbacks])
        self.guard.listeners.append(
            lambda *event: self.callbacks.emit("on_nonfinite", self, *event)
        )
        self.stop_reason: str | None = None  # request_stop(): the run ends as finished
        self.store = (
            CheckpointStore(self.run_dir / "checkpoints", cfg.keep_checkpoints)
            if self.run_dir
            else None
        )

    # ----------------------------------------------------------------- set-up
    def _train_loader(self, epoch: int, skip_batches: int = 0) -> Iterable[Any]:
        cfg = self.config
        return epoch_loader(
            self.train_data,
            self.local_batch,
            self.dist,
            cfg.seed,
            epoch,
            skip_batches,
            self.lengths,
        )

    def _val_loader(self, shard: range | None = None) -> Iterable[Any] | None:
        """Batches of ``val_data`` (or of its indices in ``shard``, one rank's slice)."""
        if self.val_data is None or isinstance(self.val_data, DataLoader):
            return self.val_data
        order = None if shard is None else list(shard)
        # group_by_length: longest first, so batches pad little (metrics ignore order)
        if self.config.group_by_length and callable(getattr(self.val_data, "lengths", None)):
            lengths = self.val_data.lengths()
            order = sorted(
                range(len(lengths)) if order is None else order, key=lambda i: -lengths[i]
            )
        return make_loader(self.val_data, self.config.eval_batch_size, order)

    def _val_shard(self) -> range:
        """This rank's contiguous slice of ``val_data``'s indices: every sample on exactly one rank, no
        padding, and the slices in rank order are the set in its order."""
        n, rank, world = len(self.val_data), self.dist.rank, self.dist.world_size
        return range(n * rank // world, n * (rank + 1) // world)

    def _setup(self, resume: bool) -> None:
        if not resume and self.store is not None and self.store.has("last"):
            raise DistillError(
                f"{self.run_dir} already holds a run; call fit(resume=True) to continue it or use another run_dir"
            )
        self._check_writable()
        self.prepare()
        prepare_models(self.distiller, self.config, self.device)  # precision and speed switches
        self._seed()
        self.optimizer = build_optimizer(
            self.distiller.trainable().named_parameters(), self.config, self.optimizer_spec
        )
        if self.config.ema is not None:
            self.ema = WeightEMA(self.distiller.student, self.config.ema, self.config.ema_tau)
        if resume:
            self._resume()
        if self.dist.enabled:
            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            # no buffer broadcast: loss buffers are the loss's own (CRD gathers its banks over ranks),
            # and rank 0's BN statistics, the ones evaluated and saved, are the same either way
            self.distiller.parallelize(
                lambda m: DistributedDataParallel(m, device_ids=ids, broadcast_buffers=False)
            )

    def _seed(self) -> None:
        """Seed every RNG; ``train.deterministic`` on CUDA only warns where no deterministic kernel exists."""
        cfg = self.config
        on_cuda = self.device.type == "cuda"
        seed_everything(cfg.seed, cfg.deterministic, warn_only=on_cuda)
        if cfg.deterministic and on_cuda and self.dist.is_main and not self._noted_deterministic:
            self._noted_deterministic = True
            self.console.print(
                "[yellow]note[/]: train.deterministic on CUDA: operations without a deterministic CUDA "
                "kernel (adaptive average pooling's backward, in every shipped CNN) warn instead of "
                "failing, and may differ in the last bits from run to run",
                soft_wrap=True,
            )

    def prepare(self) -> None:
        """Build projectors and loss parts from one example batch, check tap shapes and parameter groups
        (once).

        ``fit()`` calls it; calling it earlier surfaces those errors before anything is written
        (``distill train --overwrite`` does, before it clears the earlier run).
        """
        if self._prepared:
            return
        self._seed()
        if self.distiller.terms:
            data = self.train_data
            if isinstance(data, DataLoader):
                data = data.dataset
            context = {"num_samples": len(data)} if hasattr(data, "__len__") else {}
            self.distiller.setup(next(iter(self._train_loader(0))), **context)
            if self.distiller.source is not None:  # a cache fills itself here (cache_teacher)
                self.distiller.source.prepare(
                    self.train_data, self.config.eval_batch_size, self.console, self.dist.is_main
                )
        if not callable(self.optimizer_spec):  # parameter groups name real modules (a factory: fit)
            build_optimizer(
                self.distiller.trainable().named_parameters(), self.config, self.optimizer_spec
            )
        self._prepared = True

    # ------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" if self.run_dir else None

    def _check_writable(self) -> None:
        """Fail in the first second, not at the first checkpoint, when the run dir cannot be written."""
        if self.checkpoint_dir is None or not self.dist.is_main:
            return
        try:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.checkpoint_dir)
            probe = self.checkpoint_dir / f".write-probe-{id(self)}.tmp"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as err:
            raise write_error(err, self.checkpoint_dir, "checkpoints") from None

    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "global_step": self.global_step,
            "best": self.best,
            "history": self.history,
            "skipped_steps": self.guard.skipped,
            "skipped_in_a_row": self.guard.in_a_row,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "scaler_skipped": self.scaler_skipped,
            "scaler_in_a_row": self._scaler_in_a_row,
            "ema_updates": self.ema.updates if self.ema is not None else None,
            "callbacks": self.callbacks.state(),
            "stop_reason": self.stop_reason,
            "config": self.config.model_dump(),
        }

    def _save(self, tag: str, with_optimizer: bool) -> None:
        if self.store is None or not self.dist.is_main:
            return
        state = self._state()
        signature = json.dumps(state, sort_keys=True, default=str)
        if tag == "last" and signature == self._saved_last:
            return  # nothing changed since the newest 'last' (stopped right after a checkpoint)
        optimizer = self.optimizer if with_optimizer else None
        extra = state_tensors(self.ema.module.state_dict(), EMA_PREFIX) if self.ema else None
        # a second 'last' at one step (after an evaluation) goes to a new file: see CheckpointStore.save
        path = self.store.save(tag, self.distiller.trainable(), state, optimizer, extra)
        if tag == "last":
            self._saved_last = signature
        for hook in self.after_checkpoint:
            hook(tag)
        self.callbacks.emit("on_checkpoint", self, tag, path)

    def _resume(self) -> None:
        if self.store is None:
            return
        if not self.store.has("last"):  # stopped before its first checkpoint: the run starts over
            if self.dist.is_main and self.run_dir is not None:
                truncate_metrics(self.run_dir, 0, eval_steps=())
            return
        if self.dist.is_main:
            self.store.cleanup()  # temporaries and unlisted files a killed process left behind
        loaded = self.store.load("last")
        if loaded.recovered and self.dist.is_main:
            self.console.print(
                f"[yellow]warning[/]: {self.store.manifest_path} was missing; the list of checkpoints "
                "was rebuilt from the files' own headers",
                soft_wrap=True,
            )
        for problem in loaded.skipped:
            if self.dist.is_main:
                self.console.print(
                    f"[yellow]warning[/]: {problem}; using an older checkpoint", soft_wrap=True
                )
        tensors, state = loaded.tensors, loaded.state
        self.distiller.trainable().load_state_dict(model_tensors(tensors))
        if "optimizer" in state:
            self.optimizer.load_state_dict(
                optimizer_state_from_json(unflatten_state(state["optimizer"], tensors))
            )
        self.epoch, self.epoch_step = state["epoch"], state["epoch_step"]
        self.global_step, self.best, self.history = (
            state["global_step"],
            state["best"],
            state["history"],
        )
        self.guard.skipped = state.get("skipped_steps", 0)
        self.guard.in_a_row = state.get("skipped_in_a_row", 0)
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.scaler_skipped = state.get("scaler_skipped", 0)
        self._scaler_in_a_row = state.get("scaler_in_a_row", 0)
        self.stop_reason = state.get("stop_reason")
        self.callbacks.load(state.get("callbacks"), self.console if self.dist.is_main else None)
        if self.ema is not None:
            self._resume_ema(tensors, state)
        if self.dist.is_main and self.run_dir is not None:  # those steps are about to run again
            evaluated = [record.get("step") for record in self.history]
            truncate_metrics(self.run_dir, self.global_step, eval_steps=evaluated)
        self._saved_last = json.dumps(self._state(), sort_keys=True, default=str)
        if self.dist.is_main:
            self.console.print(
                f"[green]resumed[/] from {self.checkpoint_dir} at epoch {self.epoch}, step {self.global_step}"
            )

    def _resume_ema(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """The average saved with the checkpoint, or (a run that had no EMA) one started from its weights."""
        assert self.ema is not None
        saved = model_tensors(tensors, EMA_PREFIX)
        if saved:
            self.ema.module.load_state_dict(saved)
            self.ema.updates = int(state.get("ema_updates") or 0)
            return
        self.ema = WeightEMA(self.distiller.student, self.ema.decay, self.ema.tau)
        if self.dist.is_main:
            self.console.print(
                f"[yellow]warning[/]: the checkpoint in {self.checkpoint_dir} has no weight average "
                "(train.ema was off); starting one from its weights",
                soft_wrap=True,
            )

    def request_stop(self, reason: str) -> None:
        """Stop at the next step boundary (a callback's call): ``last`` is saved and the run ends as
        finished, with ``reason`` in the summary; a resumed run stays stopped."""
        if self.stop_reason is None and self.dist.is_main:
            self.console.print(f"[yellow]stopping[/]: {reason}", soft_wrap=True)
        self.stop_reason = self.stop_reason or reason

    @property
    def skipped_steps(self) -> int:
        """Non-finite steps skipped so far (``on_nonfinite: skip``)."""
        return self.guard.skipped

    @property
    def final_student(self) -> torch.nn.Module:
        """What is evaluated and handed over: the weight average with ``train.ema``, else the student."""
        return self.ema.module if self.ema is not None else self.distiller.student

    # ------------------------------------------------------------------ steps
    def _train_step(self, raws: list[Any], total_steps: int, warmup: int, steps_per_epoch: int):
        """One optimizer step over ``raws``, its micro-batches (``train.grad_accum_steps``, fewer at the
        end of an epoch): each loss is scaled by 1/len(raws) and the gradients add up, so the update is
        the one of their concatenation (for models without batch statistics). Returns the step's metrics
        (None: the step was not applied), the learning rate and the samples seen."""
        cfg = self.config
        # dropout, CRD negatives, MGD masks: a function of the step and the rank
        torch.manual_seed(step_seed(cfg.seed, self.global_step, self.dist.rank))
        g = (
            torch.Generator().manual_seed(
                cfg.seed * 1_000_003 + self.global_step * 131 + self.dist.rank
            )
            if self.augment is not None
            else None
        )
        lr = apply_step_settings(
            self.optimizer, self.global_step, total_steps, warmup, steps_per_epoch, cfg
        )
        side = self.distiller.trainable()
        # a skipped step must not leave NaN in BN statistics or memory banks either
        saved = (
            [(b, b.detach().clone()) for b in side.buffers()] if cfg.on_nonfinite == "skip" else []
        )
        self.optimizer.zero_grad(set_to_none=True)
        amp, n = autocast_dtype(cfg), len(raws)
        wrapped = self.distiller.student_side
        sums: dict[str, torch.Tensor] = {}  # each metric averaged over the micro-batches
        parts: list[str] = []
        seen = 0
        for i, raw in enumerate(raws):
            batch = self.task.split(raw).to(self.device)
            if g is not None:
                batch.inputs = self.augment(batch.inputs, g)
                if isinstance(self.augment, ConsistentAugment) and self.augment.mix is not None:
                    # one draw per batch; teacher and student both read the mixed inputs
                    batch.inputs, partner, lam = self.augment.mix(batch.inputs, g)
                    batch = self.task.mix_targets(batch, partner, lam)
            if cfg.channels_last:
                batch.inputs = channels_last_inputs(batch.inputs)
            # DDP all-reduces the gradients once, after the last micro-batch's backward
            last = i == n - 1
            ddp = isinstance(wrapped, DistributedDataParallel)
            with wrapped.no_sync() if ddp and not last else nullcontext():
                with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                    step = self.distiller(batch, epoch=self.global_step / steps_per_epoch)
                loss = step.loss if n == 1 else step.loss / n
                # every rank runs backward, so DDP's gradient all-reduce stays in step
                self.scaler.scale(loss).backward()
            parts = list(step.parts)
            micro = {"loss": step.loss.detach(), **{k: v.detach() for k, v in step.parts.items()}}
            micro.update(self.task.batch_metrics(step.outputs, batch))
            for k, v in micro.items():
                v = v if n == 1 else v / n
                sums[k] = sums[k] + v if k in sums else v
            seen += len(batch)
        self.scaler.unscale_(self.optimizer)  # fp16: clip and check the true gradients
        params = self.distiller.trainable_parameters()
        if cfg.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm(
                [p.grad for p in params if p.grad is not None]
            )
        loss_bad, grad_bad = nonfinite(sums["loss"], grad_norm, self.dist)
        if grad_bad and not loss_bad and self.scaler.is_enabled():
            self._scaler_in_a_row += 1
            if self._scaler_in_a_row <= MAX_SCALER_SKIPS:  # an fp16 overflow: skip, lower the scale
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.update()
                self.scaler_skipped += 1
                return None, lr, seen
        if loss_bad or grad_bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            mean = DistillStep(sums["loss"], {k: sums[k] for k in parts}, {})
            self.guard.handle(mean, grad_norm, self.global_step, saved, self._logger)
            return None, lr, seen
        self.guard.ok()
        self._scaler_in_a_row = 0
        self.optimizer.step()  # the verdict above is the scaler's inf check: no second host sync
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.distiller.student)
        sums["grad_norm"] = grad_norm.detach()
        return sums, lr, seen

    def evaluate(self) -> dict[str, float]:
        """Task metrics of the student on ``val_data``, the same on every rank. Under DDP a task that
        shards evaluation (classification) predicts on each rank's slice and the metrics come from all
        ranks' predictions; otherwise (or for a DataLoader given by the caller) rank 0 computes them."""
        loader = self._val_loader()
        if (
            loader is not None
            and self.dist.enabled
            and getattr(self.task, "shards_evaluation", False)
            and not isinstance(self.val_data, DataLoader)
        ):
            shard = self._val_loader(self._val_shard())
            broadcast_buffers(self.final_student, self.dist)  # rank 0's BN statistics everywhere
            part = self.task.predictions(
                self.final_student, shard, self.distiller.teacher, self.device
            )
            return self.task.metrics_of(gather_objects(part, self.dist))
        metrics: dict[str, float] = {}
        if loader is not None and self.dist.is_main:
            # a DataLoader given by the caller may shuffle: stored predictions only for our own order
            ordered = not isinstance(self.val_data, DataLoader)
            teacher = self.teacher_predictions if ordered else self.distiller.teacher
            metrics = self.task.evaluate(self.final_student, loader, teacher, self.device)
        return broadcast_object(metrics, self.dist)

    # ------------------------------------------------------------------- loop
    def fit(self, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Train for ``config.epochs`` (or ``max_steps``); returns ``{"best": ..., "last": ..., "history": ...}``.

        ``resume`` continues from ``run_dir``'s last checkpoint. ``stop_after`` stops after that global step
        as an interruption would (the schedule is unchanged; ``last`` is saved), for tests and time budgets.
        ``run_dir`` is locked for the call (:class:`~distill.train.rundir.RunLock`: another training there
        is refused). SIGINT or SIGTERM (main thread only; every rank agrees under ``torchrun``) stops the
        loop at the next step boundary, saves ``last`` and raises :class:`~distill.errors.TrainingInterrupted`
        (a second signal, or one before the loop starts, raises it at once).
        """
        lock = RunLock(self.run_dir) if self.run_dir is not None and self.dist.is_main else None
        if lock is not None:
            lock.acquire()
        self._stop_signal, self._accept_stop = None, False
        handled = (signal.SIGINT, signal.SIGTERM)
        previous: dict[int, Any] = {}
        try:
            if threading.current_thread() is threading.main_thread():
                previous = {s: signal.signal(s, self._on_signal) for s in handled}
            return self._fit(resume, stop_after)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            self._accept_stop = False
            if lock is not None:
                lock.release()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None or not self._accept_stop:
            raise TrainingInterrupted(signum, None)
        self._stop_signal = signum

    def _fit(self, resume: bool, stop_after: int | None) -> dict[str, Any]:
        cfg = self.config
        self._stop_after = stop_after
        self.stop_reason = None
        self._setup(resume)
        self.callbacks.emit("on_fit_start", self)
        # an optimizer step takes grad_accum_steps micro-batches (fewer at the end of an epoch)
        steps_per_epoch = math.ceil(len(self._train_loader(0)) / cfg.grad_accum_steps)
        total = (
            cfg.epochs * steps_per_epoch
            if cfg.max_steps is None
            else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
        )
        warmup = warmup_steps(cfg, steps_per_epoch, total)
        logger = self._logger = MetricsLogger(
            self.run_dir,
            cfg.tensorboard,
            enabled=self.dist.is_main,
            loggers=[(spec.name, spec.options) for spec in cfg.loggers],
            recipe=self.recipe,
            meta=self._run_meta(),
        )
        progress = make_progress(cfg.progress and self.dist.is_main, self.console)
        if cfg.progress and self.dist.is_main:  # a CPU fallback is visible before the first step
            self.console.print(
                f"training on {describe_device(cfg.device, self.device, self.dist)}", soft_wrap=True
            )
        last: dict[str, float] = self.history[-1] if self.history else {}
        self._accept_stop = True
        looped = False
        try:
            with progress:
                bar = progress.add_task("train", total=total, completed=self.global_step, info="")
                while self.epoch < cfg.epochs and self.global_step < total and not self._stopped():
                    last = (
                        self._run_epoch(progress, bar, logger, total, warmup, steps_per_epoch)
                        or last
                    )
            looped = True
        except (
            RuntimeError,
            MemoryError,
        ) as err:  # a batch that does not fit; checkpoints are kept
            if not is_allocation_failure(err):
                raise
            raise DistillError(
                f"training step {self.global_step + 1} needs more memory than this machine has "
                f"({str(err).strip()[:120]}); use a smaller train.batch_size or eval_batch_size, "
                "smaller model options or images"
            ) from None
        finally:
            self._accept_stop = False  # from here on a signal interrupts at once
            if not looped:  # the loggers end their runs as failed
                logger.close(None)
        summary = {
            "primary_metric": self.task.primary_metric,
            "best": self.best,
            "last": last,
            "history": self.history,
            "steps": self.global_step,
            "skipped_steps": self.skipped_steps,
            # where it ran: train.device auto may have fallen back to the CPU
            "device": str(self.device),
            "torch": torch.__version__,
            "world_size": self.dist.world_size,
        }
        if self.stop_reason is not None:
            summary["stopped"] = self.stop_reason
        complete = self.global_step >= total or self.epoch >= cfg.epochs or bool(self.stop_reason)
        if self.run_dir is not None and self.dist.is_main:
            try:
                write_json(self.run_dir / "summary.json", summary)
                if complete:  # hand over the student
                    save_model(self.run_dir / "model.safetensors", self.final_student)
            except OSError as err:
                raise write_error(err, self.run_dir, "summary") from None
        logger.close(summary)
        self.callbacks.emit("on_fit_end", self, summary)
        barrier(self.dist)
        if self._stop_signal is not None and not complete:
            raise TrainingInterrupted(self._stop_signal, self.global_step)
        return summary

    def _run_meta(self) -> dict[str, Any]:
        """Where and how this run runs, for the loggers (W&B config ``run``, MLflow tags)."""
        return {
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "torch": torch.__version__,
            "start_step": self.global_step,  # a resumed run starts past 0
        }

    def _run_epoch(
        self, progress, bar, logger: MetricsLogger, total: int, warmup: int, steps_per_epoch: int
    ):
        cfg = self.config
        progress.update(bar, description=f"epoch {self.epoch + 1}/{cfg.epochs}")
        self.distiller.train()
        sums: dict[str, torch.Tensor] = {}
        seen, count, started = 0, 0, time.perf_counter()
        accum = cfg.grad_accum_steps
        loader = self._train_loader(self.epoch, self.epoch_step * accum)
        for raws in _groups(loader, accum):
            if self.global_step >= total or self._stopped():
                break
            metrics, lr, n = self._train_step(raws, total, warmup, steps_per_epoch)
            self.global_step += 1
            self.epoch_step += 1
            if self.callbacks:
                self.callbacks.emit(
                    "on_step_end", self, self.global_step, {**(metrics or {}), "lr": lr}
                )
            seen = seen + n
            if metrics is not None:  # None: a skipped non-finite step
                count += 1
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
            if count and (self.global_step % cfg.log_every == 0 or self.global_step == total):
                values = {k: float(v) / max(count, 1) for k, v in sums.items()}
                if self.skipped_steps:
                    values["skipped_steps"] = self.skipped_steps
                if self.scaler_skipped:
                    values["scaler_skipped_steps"] = self.scaler_skipped
                rate = seen * self.dist.world_size / (time.perf_counter() - started)
                logger.log(
                    "train",
                    {
                        "step": self.global_step,
                        "epoch": self.epoch + self.epoch_step / steps_per_epoch,
                        "lr": lr,
                        "samples_per_s": round(rate, 1),
                        **values,
                    },
                )
                progress.update(bar, info=format_values(values))
                sums, seen, count, started = {}, 0, 0, time.perf_counter()
            progress.update(bar, completed=self.global_step)
            # the run's last step is saved after the final evaluation: saved before it, a kill during
            # the evaluation would leave a checkpoint that resumes as finished, without it
            every = cfg.checkpoint_every
            if every and self.global_step % every == 0 and self.global_step < total:
                self._save("last", with_optimizer=True)
        epoch_done = self.epoch_step >= steps_per_epoch
        if epoch_done:
            self.epoch, self.epoch_step = self.epoch + 1, 0
        finished = self.epoch >= cfg.epochs or self.global_step >= total
        record: dict[str, float] = {}
        if finished or (epoch_done and self.epoch % cfg.eval_every == 0):
            # ended mid-epoch (train.max_steps): labelled by progress (1.5), not as the last whole epoch
            epoch = self.epoch if epoch_done else self.epoch + self.epoch_step / steps_per_epoch
            record = self._evaluate_and_record(logger, progress, epoch)
        self._save("last", with_optimizer=True)
        return record

    def _stopped(self) -> bool:
        """At a step boundary: stop_after reached, or a signal came (on any rank: all of them stop)."""
        if self.dist.enabled:
            self._stop_signal = any_rank(self._stop_signal or 0, self.dist, self.device) or None
            if self.callbacks:  # a stop one rank's callback asked for stops every rank
                asked = any_rank(int(self.stop_reason is not None), self.dist, self.device)
                if asked and self.stop_reason is None:
                    self.stop_reason = "a callback on another rank asked to stop"
        if self._stop_signal is not None or self.stop_reason is not None:
            return True
        return self._stop_after is not None and self.global_step >= self._stop_after

    def _evaluate_and_record(
        self, logger: MetricsLogger, progress, epoch: float
    ) -> dict[str, float]:
        """Evaluate, log an ``eval`` record and keep the best; ``epoch`` is the epochs done (an int after a
        whole epoch, a fraction such as 1.5 when training ended mid-epoch)."""
        metrics = self.evaluate()
        if not metrics:
            return {}
        record = {"epoch": epoch, "step": self.global_step, **metrics}
        self.history.append(record)
        logger.log("eval", record)
        key = self.task.primary_metric
        self.callbacks.emit("on_evaluate_end", self, record)
        if not self.best or metrics[key] > self.best[key]:
            self.best = dict(record)
            self._save("best", with_optimizer=False)
        if self.dist.is_main:
            shown = {k: v for k, v in metrics.items() if k != "samples"}
            label = (
                f"epoch {epoch}"
                if isinstance(epoch, int)
                else f"epoch {epoch:.2f} (step {self.global_step}, partial)"
            )
            progress.console.print(f"{label}: {format_values(shown)}")
        return record


def _groups(batches: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """``batches`` in lists of ``size`` (the last one shorter when they do not divide)."""
    group: list[Any] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
