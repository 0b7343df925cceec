"""The training loop: read it top to bottom.

:meth:`Trainer.fit` sets up (data order, projectors, optimizer, resume, DDP), then runs epochs of
optimizer steps (:mod:`distill.train.step`: one step, its seeding, accumulation, clipping and non-finite
verdict), evaluates, keeps the best and saves ``last`` (:mod:`distill.train.state`: what a checkpoint
holds and how a resumed run gets it back). Every step is a pure function of (weights, optimizer state,
global step): the data order comes from a seeded sampler and the random state from the step number, so
a resumed run skips the batches it already saw and continues bit for bit. Logging is a user of the
callback events (:class:`~distill.train.logging.RunLog`; the progress display is
:mod:`distill.train.progress`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from distill.distiller import Distiller
from distill.errors import DistillError, TrainingInterrupted, is_allocation_failure
from distill.train import state
from distill.train.callbacks import CALLBACKS, Callback, Callbacks
from distill.train.checkpoint import CheckpointStore
from distill.train.config import TrainConfig
from distill.train.distributed import (
    DistInfo,
    any_rank,
    barrier,
    describe_device,
    init_distributed,
    pick_device,
)
from distill.train.ema import WeightEMA
from distill.train.evaluation import Evaluator
from distill.train.fsdp import shard_distiller
from distill.train.logging import MetricsLogger, RunLog
from distill.train.nonfinite import NonFiniteGuard
from distill.train.optim import (
    OptimizerSpec,
    apply_step_settings,
    build_optimizer,
    warmup_steps,
)
from distill.train.precision import prepare_models
from distill.train.progress import make_progress
from distill.train.rundir import RunLock
from distill.train.sampling import (
    epoch_loader,
    item_lengths,
    seed_everything,
    user_loader,
)
from distill.train.step import Augment, Metrics, Stepper, batch_groups, out_of_memory
from distill.train.stopping import StopSignals


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
        self.fsdp = self.dist.enabled and cfg.distributed == "fsdp"  # see train/fsdp.py
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
        teacher = self.distiller.teacher
        if self.distiller.source is not None:  # a top-k cache: no teacher in some runs, in none
            teacher = self.distiller.source.evaluation_teacher(teacher)
        self.evaluator = Evaluator(
            self.task, val_data, teacher, cfg, self.dist, self.device, fsdp=self.fsdp
        )
        self.global_step = 0
        self.epoch = 0
        self.epoch_step = 0
        self.best: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.guard = NonFiniteGuard(cfg, self.console, self.dist.is_main)  # train.on_nonfinite
        # one optimizer step; it owns the fp16 gradient scaler
        self.stepper = Stepper(self.distiller, cfg, self.dist, self.device, self.guard, augment)
        self.step_samples = 0  # samples this rank saw in the last step
        self._prepared = False
        self._noted_deterministic = False
        self._stop_after: int | None = None
        self.signals = StopSignals()  # SIGINT/SIGTERM received during fit()
        # called with the tag ("last", "best") after each checkpoint is saved (rank 0)
        self.after_checkpoint: list[Callable[[str], None]] = []
        built = [CALLBACKS.create(spec.name, spec.options) for spec in cfg.callbacks]
        self.callbacks = Callbacks([*built, *callbacks])
        self.guard.listeners.append(
            lambda *event: self.callbacks.emit("on_nonfinite", self, *event)
        )
        self.stop_reason: str | None = None  # request_stop(): the run ends as finished
        self.log: RunLog | None = None  # the logging of the fit() under way
        self.log_window: dict[str, Any] | None = None  # a resumed run's unfinished logging window
        # seconds of the applied steps spent generating and training (a sampling data mode), in all
        self.time_spent: dict[str, float] = {}
        self.store = (
            CheckpointStore(self.run_dir / "checkpoints", cfg.keep_checkpoints)
            if self.run_dir
            else None
        )

    # ----------------------------------------------------------------- set-up
    def _train_loader(self, epoch: int, skip_batches: int = 0) -> Iterable[Any]:
        data, seed = self.train_data, self.config.seed
        return epoch_loader(
            data, self.local_batch, self.dist, seed, epoch, skip_batches, self.lengths
        )

    def _val_loader(self) -> Iterable[Any] | None:
        return self.evaluator.loader()

    def _setup(self, resume: bool) -> None:
        if not resume and self.store is not None and self.store.has("last"):
            raise DistillError(
                f"{self.run_dir} already holds a run; call fit(resume=True) to continue it or use another run_dir"
            )
        if self.checkpoint_dir is not None and self.dist.is_main:
            state.check_writable(self.checkpoint_dir)
        self.prepare()
        prepare_models(self.distiller, self.config, self.device)  # precision and speed switches
        self._seed()
        if self.fsdp:  # before the optimizer, which then holds each rank's shards
            shard_distiller(self.distiller, self.device, self.dist)
        self.optimizer = build_optimizer(
            self.distiller.trainable().named_parameters(), self.config, self.optimizer_spec
        )
        if self.config.ema is not None:
            self.ema = WeightEMA(self.distiller.student, self.config.ema, self.config.ema_tau)
        if resume:
            self._resume()
        if self.dist.enabled and not self.fsdp:
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
        # a cache fills itself here (cache_teacher), seq_kd's teacher writes its completions (also
        # with no terms: across tokenizers it trains on the task loss alone)
        if self.distiller.source is not None:
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

    def _save(self, tag: str, with_optimizer: bool) -> None:
        path = state.save(self, tag, with_optimizer)
        if path is None:
            return
        for hook in self.after_checkpoint:
            hook(tag)
        self.callbacks.emit("on_checkpoint", self, tag, path)

    def _resume(self) -> None:
        state.resume(self)

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

    @property
    def scaler(self) -> torch.amp.GradScaler:
        """The fp16 gradient scaler (disabled, it passes everything through)."""
        return self.stepper.scaler

    @property
    def scaler_skipped(self) -> int:
        """fp16 steps the scaler skipped for a gradient overflow, in all."""
        return self.stepper.scaler_skipped

    # ------------------------------------------------------------------ steps
    def _train_step(
        self, raws: list[Any], total_steps: int, warmup: int, steps_per_epoch: int
    ) -> tuple[Metrics | None, float]:
        """One optimizer step over the micro-batches ``raws`` at this step's learning rate: the step's
        metrics (None: not applied, see :meth:`Stepper.run <distill.train.step.Stepper.run>`) and
        the learning rate."""
        cfg = self.config
        lr = apply_step_settings(
            self.optimizer, self.global_step, total_steps, warmup, steps_per_epoch, cfg
        )
        epoch = self.global_step / steps_per_epoch
        metrics, self.step_samples = self.stepper.run(
            raws, self.optimizer, self.global_step, epoch, self.ema
        )
        if metrics is not None and "generate_s" in metrics:
            for key in ("generate_s", "train_s"):
                self.time_spent[key] = self.time_spent.get(key, 0.0) + float(metrics[key])
        return metrics, lr

    def evaluate(self) -> dict[str, float]:
        """Task metrics of the final student on ``val_data``, the same on every rank (see
        :class:`~distill.train.evaluation.Evaluator`)."""
        return self.evaluator.evaluate(self.final_student)

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
        try:
            with self.signals:
                return self._fit(resume, stop_after)
        finally:
            if lock is not None:
                lock.release()

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
        logger = MetricsLogger(
            self.run_dir,
            cfg.tensorboard,
            enabled=self.dist.is_main,
            loggers=[(spec.name, spec.options) for spec in cfg.loggers],
            recipe=self.recipe,
            meta=state.run_meta(self),
        )
        progress = make_progress(cfg.progress and self.dist.is_main, self.console)
        log = RunLog(
            logger, progress, total, steps_per_epoch, cfg.epochs, self.global_step, self.log_window
        )
        self.log, self.log_window = log, None
        self.callbacks.internal = [log]  # logging runs first at every event
        if cfg.progress and self.dist.is_main:  # a CPU fallback is visible before the first step
            self.console.print(
                f"training on {describe_device(cfg.device, self.device, self.dist)}", soft_wrap=True
            )
        if (
            cfg.distributed == "fsdp" and not self.dist.enabled
        ):  # the same recipe runs on one process
            self.console.print(
                "[yellow]note[/]: train.distributed: fsdp is off in a single process (nothing is "
                "sharded); launch with torchrun to shard, e.g. torchrun --nproc_per_node=N -m distill "
                "train RECIPE",
                soft_wrap=True,
            )
        last: dict[str, float] = self.history[-1] if self.history else {}
        self.signals.accepting = True
        try:
            with log:
                while self.epoch < cfg.epochs and self.global_step < total and not self._stopped():
                    log.start_epoch(self.epoch)
                    last = self._run_epoch(total, warmup, steps_per_epoch) or last
        except (
            RuntimeError,
            MemoryError,
        ) as err:  # a batch that does not fit; checkpoints are kept
            if not is_allocation_failure(err):
                raise
            raise out_of_memory(err, self.global_step + 1) from None
        finally:
            self.signals.accepting = False  # from here on a signal interrupts at once
        summary = state.run_summary(self, last)
        complete = self.global_step >= total or self.epoch >= cfg.epochs or bool(self.stop_reason)
        state.write_outputs(self, summary, complete)
        self.callbacks.emit("on_fit_end", self, summary)  # logging ends the loggers' runs
        barrier(self.dist)
        if self.signals.signum is not None and not complete:
            raise TrainingInterrupted(self.signals.signum, self.global_step)
        return summary

    def _run_epoch(self, total: int, warmup: int, steps_per_epoch: int) -> dict[str, float]:
        """Train the rest of the current epoch (or up to ``total`` steps, or a stop), evaluate when due
        and save ``last``; returns the evaluation's record (empty when none ran)."""
        cfg = self.config
        self.distiller.train()
        accum = cfg.grad_accum_steps
        loader = self._train_loader(self.epoch, self.epoch_step * accum)
        for raws in batch_groups(loader, accum):
            if self.global_step >= total or self._stopped():
                break
            metrics, lr = self._train_step(raws, total, warmup, steps_per_epoch)
            self.global_step += 1
            self.epoch_step += 1
            # metrics None: a skipped non-finite step
            self.callbacks.emit(
                "on_step_end", self, self.global_step, {**(metrics or {}), "lr": lr}
            )
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
            record = self._evaluate_and_record(epoch)
        self._save("last", with_optimizer=True)
        return record

    def _stopped(self) -> bool:
        """At a step boundary: stop_after reached, or a signal came (on any rank: all of them stop)."""
        self.signals.agree(self.dist, self.device)
        if self.dist.enabled:
            if self.callbacks:  # a stop one rank's callback asked for stops every rank
                asked = any_rank(int(self.stop_reason is not None), self.dist, self.device)
                if asked and self.stop_reason is None:
                    self.stop_reason = "a callback on another rank asked to stop"
        if self.signals.signum is not None or self.stop_reason is not None:
            return True
        return self._stop_after is not None and self.global_step >= self._stop_after

    def _evaluate_and_record(self, epoch: float) -> dict[str, float]:
        """Evaluate, record it (logging prints and logs it at ``on_evaluate_end``) and keep the best;
        ``epoch`` is the epochs done (an int after a whole epoch, a fraction such as 1.5 when training
        ended mid-epoch)."""
        metrics = self.evaluate()
        if not metrics:
            return {}
        record = {"epoch": epoch, "step": self.global_step, **metrics}
        self.history.append(record)
        self.callbacks.emit("on_evaluate_end", self, record)
        key = self.task.primary_metric
        if not self.best or metrics[key] > self.best[key]:
            self.best = dict(record)
            self._save("best", with_optimizer=False)
        return record
