"""What the trainer does with a step whose loss or gradient norm is NaN/inf (``train.on_nonfinite``).

``stop`` raises before the optimizer step, so the weights in memory and the last checkpoint are good.
``skip`` drops the step, restores the buffers the forward pass touched (BN statistics, memory banks),
counts it and stops after ``max_skipped_steps`` in a row. Under DDP the verdict is all-reduced so every
rank takes the same decision. With ``precision: fp16`` a finite loss with inf/NaN gradients is first the
gradient scaler's business (an overflow: the step is skipped and the scale lowered, see
:mod:`distill.train.precision`); only when that keeps happening does ``on_nonfinite`` apply.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console

from distill.errors import DistillError
from distill.train.config import TrainConfig
from distill.train.distributed import DistInfo
from distill.train.logging import format_values

FIX = "lower the learning rate or a term weight, or set train.grad_clip"


def nonfinite(loss: torch.Tensor, grad_norm: torch.Tensor, dist: DistInfo) -> tuple[bool, bool]:
    """Whether the loss, and whether the gradient norm, is NaN/inf on any rank: one fused check and the
    step's one host sync (the step must not be applied before the verdict is known).

    On one process the check is the sum of the two read as one number: finite means both are (the
    common case, two small ops); otherwise each is checked (a sum that overflows with both finite
    passes there)."""
    if not dist.enabled:
        both = loss.detach().float() + grad_norm.detach().float()
        if math.isfinite(both.tolist()):  # a 0-dim tensor: one number
            return False, False
    bad = ~torch.isfinite(torch.stack([loss.detach().float(), grad_norm.detach().float()]))
    flags = bad.float()
    if dist.enabled:  # all ranks take the same decision
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    loss_bad, grad_bad = flags.tolist()
    return bool(loss_bad), bool(grad_bad)


class NonFiniteGuard:
    """Applies ``on_nonfinite`` and counts skipped steps (both counts go into checkpoints)."""

    def __init__(self, config: TrainConfig, console: Console, is_main: bool) -> None:
        self.config, self.console, self.is_main = config, console, is_main
        self.skipped = 0  # in all
        self.in_a_row = 0
        # called with (1-based step, loss, grad norm, action) before the step is stopped or skipped:
        # the trainer's callbacks' on_nonfinite, whose logging writes the 'nonfinite' record
        self.listeners: list[Callable[[int, float, float, str], None]] = []

    def ok(self) -> None:
        """A finite step: the run of bad ones is over."""
        self.in_a_row = 0

    def handle(
        self,
        step: Any,
        grad_norm: torch.Tensor,
        steps_done: int,
        restore: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        """Stop, or skip the step: ``restore`` pairs each buffer with its value before the step.

        ``steps_done`` counts the steps before this one; messages and the ``nonfinite`` record name the
        step as ``metrics.jsonl`` does (1-based: the first step is step 1).
        """
        cfg = self.config
        global_step = steps_done + 1
        loss, norm = float(step.loss.detach()), float(grad_norm)
        parts = format_values({k: float(v.detach()) for k, v in step.parts.items()})
        what = f"loss became {loss}" if not math.isfinite(loss) else f"gradient norm became {norm}"
        for listener in self.listeners:
            listener(global_step, loss, norm, cfg.on_nonfinite)
        if cfg.on_nonfinite == "stop":
            raise DistillError(
                f"{what} at step {global_step} ({parts}); {FIX}, or set train.on_nonfinite=skip; "
                "the last good checkpoint is kept (continue with --resume)"
            )
        for buffer, old in restore:
            buffer.copy_(old)
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= cfg.max_skipped_steps:
            raise DistillError(
                f"{what} at step {global_step}: {self.in_a_row} non-finite steps in a row "
                f"(max_skipped_steps={cfg.max_skipped_steps}, {self.skipped} skipped in all); {FIX}; "
                "the last good checkpoint is kept"
            )
        if self.is_main:
            self.console.print(
                f"[yellow]warning[/]: {what} at step {global_step}; step skipped "
                f"({self.skipped} so far)",
                soft_wrap=True,
            )
