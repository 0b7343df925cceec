"""One optimizer step of the training loop: the step's random state, forward and backward over its
micro-batches, gradient unscaling and clipping, the non-finite verdict, the optimizer step and the EMA.

Every step is a pure function of (weights, optimizer state, global step): the random state (dropout, CRD
negatives, MGD masks, augmentation) is re-seeded from the step number and the rank (:func:`step_seed`;
rank 0 draws what a single process draws), so a resumed run continues bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from distill.data.views import ConsistentAugment
from distill.distiller import Distiller, DistillStep
from distill.errors import DistillError
from distill.train.config import TrainConfig
from distill.train.distributed import DistInfo
from distill.train.ema import WeightEMA
from distill.train.fsdp import local_norm
from distill.train.nonfinite import NonFiniteGuard, nonfinite
from distill.train.precision import (
    MAX_SCALER_SKIPS,
    autocast_dtype,
    channels_last_inputs,
    make_scaler,
)
from distill.train.reduction import micro_batch_weights

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
Metrics = dict[str, torch.Tensor]

# a source's timings (seconds) of one micro-batch: the step's are their sum, not their mean
SECONDS = frozenset({"generate_s"})
RANK_STRIDE = 0x9E3779B97F4A7C15  # odd, ~2**63: rank r's seeds never meet rank 0's of another step


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The global RNG's seed for ``step`` on ``rank``: ``seed * 1_000_003 + step`` on rank 0 (one process
    draws as it always did), offset per rank so that ranks do not repeat each other's dropout masks and
    negatives; taken modulo 2**64, the range ``torch.manual_seed`` accepts."""
    return (seed * 1_000_003 + step + rank * RANK_STRIDE) % 2**64


def seed_step_rng(seed: int, device: torch.device) -> None:
    """Seed the CPU generator and ``device``'s with ``seed``: what ``torch.manual_seed`` does for the
    generators a step on ``device`` draws from. ``torch.manual_seed`` itself also seeds every CUDA device
    and, where CUDA is present but not started (CPU training with a CUDA build of torch), queues that
    seeding with a formatted stack trace on every call, which costs more than a small model's step."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)
    elif device.type != "cpu":  # mps, xpu: their own generators
        torch.manual_seed(seed)


def total_norm(grads: list[torch.Tensor], uniform: bool | None = None) -> torch.Tensor:
    """The 2-norm of all of ``grads`` together, as ``torch.nn.utils.get_total_norm`` computes it (the norm
    of the per-tensor norms); one fused call when they share a device and dtype, the common case, without
    its grouping by device and dtype. ``uniform`` says whether they do when the caller knows (checking
    costs more than the norm of a small model's gradients)."""
    if not grads:
        return torch.tensor(0.0)
    first = grads[0]
    same = (
        all(g.device == first.device and g.dtype == first.dtype for g in grads)
        if uniform is None
        else uniform
    )
    if not same or not hasattr(torch, "_foreach_norm"):
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)


def batch_groups(batches: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """``batches`` in lists of ``size`` (the last one shorter when they do not divide)."""
    group: list[Any] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def out_of_memory(err: BaseException, step: int) -> DistillError:
    """The one-line error for training step ``step`` (1-based) not fitting in memory."""
    return DistillError(
        f"training step {step} needs more memory than this machine has "
        f"({str(err).strip()[:120]}); use a smaller train.batch_size or eval_batch_size, "
        "smaller model options or images"
    )


class Stepper:
    """Runs optimizer steps of ``distiller``: it owns the fp16 gradient scaler and counts the steps it
    skipped for an overflow (``scaler_skipped``, ``scaler_in_a_row``; both are checkpointed)."""

    def __init__(
        self,
        distiller: Distiller,
        config: TrainConfig,
        dist: DistInfo,
        device: torch.device,
        guard: NonFiniteGuard,
        augment: Augment | None = None,
    ) -> None:
        self.distiller, self.task, self.config = distiller, distiller.task, config
        self.dist, self.device, self.guard, self.augment = dist, device, guard, augment
        self.scaler = make_scaler(config, device)  # precision: fp16 (disabled otherwise)
        self.scaler_skipped = 0  # fp16 steps the scaler skipped (gradient overflow), in all
        self.scaler_in_a_row = 0
        self._params: list[torch.nn.Parameter] | None = None  # the trainable ones, listed once
        self._uniform = True  # whether they share one device and dtype

    def run(
        self,
        raws: list[Any],
        optimizer: torch.optim.Optimizer,
        global_step: int,
        epoch: float,
        ema: WeightEMA | None = None,
    ) -> tuple[Metrics | None, int]:
        """One optimizer step over ``raws``, its micro-batches (``train.grad_accum_steps``, fewer at the
        end of an epoch), as step ``global_step + 1``. Returns the step's metrics, each averaged over
        the micro-batches (None: the step was not applied), and the samples seen."""
        cfg = self.config
        generator = self._seed(global_step)
        # a skipped step must not leave NaN in BN statistics or memory banks either
        saved = (
            [(b, b.detach().clone()) for b in self.distiller.trainable().buffers()]
            if cfg.on_nonfinite == "skip"
            else []
        )
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        sums, parts, seen = self.forward_backward(raws, epoch, generator, global_step)
        if "generate_s" in sums:  # a generating source: generation, training and the whole step
            step_s = time.perf_counter() - started
            sums["step_s"] = torch.tensor(step_s)
            sums["train_s"] = torch.tensor(max(step_s - float(sums["generate_s"]), 0.0))
        self.scaler.unscale_(optimizer)  # fp16: clip and check the true gradients
        grad_norm = local_norm(self._grad_norm())  # a DTensor under FSDP
        loss_bad, grad_bad = nonfinite(sums["loss"], grad_norm, self.dist)
        if grad_bad and not loss_bad and self.scaler.is_enabled():
            self.scaler_in_a_row += 1
            if self.scaler_in_a_row <= MAX_SCALER_SKIPS:  # an fp16 overflow: skip, lower the scale
                optimizer.zero_grad(set_to_none=True)
                self.scaler.update()
                self.scaler_skipped += 1
                return None, seen
        if loss_bad or grad_bad:
            optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            mean = DistillStep(sums["loss"], {k: sums[k] for k in parts}, {})
            self.guard.handle(mean, grad_norm, global_step, saved)
            return None, seen
        self.guard.ok()
        self.scaler_in_a_row = 0
        optimizer.step()  # the verdict above is the scaler's inf check: no second host sync
        self.scaler.update()
        if ema is not None:
            ema.update(self.distiller.student)
        sums["grad_norm"] = grad_norm.detach()
        return sums, seen

    def _seed(self, global_step: int) -> torch.Generator | None:
        """Seed the global RNG for this step and rank; the augmentation's own generator (or None)."""
        cfg, rank = self.config, self.dist.rank
        seed_step_rng(step_seed(cfg.seed, global_step, rank), self.device)
        if self.augment is None:
            return None
        return torch.Generator().manual_seed(cfg.seed * 1_000_003 + global_step * 131 + rank)

    def forward_backward(
        self, raws: list[Any], epoch: float, generator: torch.Generator | None, global_step: int = 0
    ) -> tuple[Metrics, list[str], int]:
        """Forward and backward over the micro-batches ``raws``: each loss is scaled by its micro-batch's
        weight (1/len(raws), or its share of the step's items for a task that counts them:
        ``train/reduction.py``) and the gradients add up, so the update is the one of their
        concatenation (for models without batch statistics). Returns the metrics averaged over the micro-batches, the loss parts' names and the
        samples seen."""
        cfg, n = self.config, len(raws)
        amp = autocast_dtype(cfg)
        # fp32 enters no autocast region (one that is disabled costs a few microseconds a step), unless
        # the caller's code runs inside one, which fp32 turns off as it always did
        no_autocast = amp is None and not torch.is_autocast_enabled(self.device.type)
        wrapped = self.distiller.student_side
        ddp = isinstance(wrapped, DistributedDataParallel)
        sums: Metrics = {}
        parts: list[str] = []
        seen = 0
        split = [self.task.split(raw) for raw in raws]  # split once: counted, then trained on
        weights = micro_batch_weights(self.task, split, self.dist, self.device)
        for i, batch in enumerate(split):
            batch = batch.to(self.device)
            if generator is not None:
                batch.inputs = self.augment(batch.inputs, generator)
                if isinstance(self.augment, ConsistentAugment) and self.augment.mix is not None:
                    # one draw per batch; teacher and student both read the mixed inputs
                    batch.inputs, partner, lam = self.augment.mix(batch.inputs, generator)
                    batch = self.task.mix_targets(batch, partner, lam)
            if cfg.channels_last:
                batch.inputs = channels_last_inputs(batch.inputs)
            # DDP all-reduces the gradients once, after the last micro-batch's backward
            with wrapped.no_sync() if ddp and i < n - 1 else nullcontext():
                if no_autocast:
                    step = self.distiller(batch, epoch=epoch, step=global_step)
                else:
                    with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                        step = self.distiller(batch, epoch=epoch, step=global_step)
                # a task that counts its items (tokens): the micro-batch's share of the step's items
                if weights is not None:
                    loss = step.loss * weights.loss[i]
                else:
                    loss = step.loss if n == 1 else step.loss / n
                # every rank runs backward, so DDP's gradient all-reduce stays in step
                self.scaler.scale(loss).backward()
            parts = list(step.parts)
            micro = {"loss": step.loss.detach(), **{k: v.detach() for k, v in step.parts.items()}}
            # a source may replace the batch (on-policy samples) and report its own metrics
            micro.update(self.task.batch_metrics(step.outputs, step.batch or batch))
            if step.metrics:
                micro.update({k: torch.tensor(float(v)) for k, v in step.metrics.items()})
            for k, v in micro.items():
                if k not in SECONDS:  # seconds add up over the micro-batches; the rest averages
                    v = v * weights.metric[i] if weights is not None else v if n == 1 else v / n
                sums[k] = sums[k] + v if k in sums else v
            seen += len(batch)
        return sums, parts, seen

    def _grad_norm(self) -> torch.Tensor:
        """The trainable parameters' total gradient norm, clipped to ``train.grad_clip`` when set."""
        if self._params is None:
            self._params = self.distiller.trainable_parameters()
            # a gradient has its parameter's device and dtype: checked once, not every step
            first = self._params[0] if self._params else None
            self._uniform = all(
                p.device == first.device and p.dtype == first.dtype for p in self._params
            )
        params = self._params
        if self.config.grad_clip:
            return torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        return total_norm([p.grad for p in params if p.grad is not None], self._uniform)
