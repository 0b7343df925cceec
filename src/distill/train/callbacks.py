"""Callbacks: code that runs at the trainer's events, without touching the loop.

A callback subclasses :class:`Callback` and overrides the events it needs (the others do nothing). It
may call ``trainer.request_stop(reason)``: the loop stops at the next step boundary, saves ``last`` and
ends the run as finished (``model.safetensors`` is written; ``summary["stopped"]`` holds the reason).
Whatever a callback must remember across an interruption goes in :meth:`Callback.state_dict` (JSON
values): it is saved in every checkpoint and handed back to :meth:`Callback.load_state_dict` on resume.

Recipes name registered callbacks under ``train.callbacks``; a plugin module (``plugins:``) registers its
own with ``@CALLBACKS.register("name")``. Events run on every rank, except ``on_checkpoint`` (rank 0,
which writes checkpoints); evaluation metrics are the same on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console

from distill.errors import ConfigError, DistillError
from distill.registry import Registry

if TYPE_CHECKING:
    from distill.train.trainer import Trainer


class Callback:
    """The events of a training run, in the order they come; every method does nothing by default."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step (after a resume has restored the run and this callback's state)."""

    def on_step_end(self, trainer: Trainer, step: int, metrics: Mapping[str, Any]) -> None:
        """After optimizer step ``step`` (1-based, as in ``metrics.jsonl``). ``metrics`` holds the step's
        loss parts as tensors (``float()`` waits for the GPU) and ``lr``; empty but for ``lr`` when the
        step was skipped as non-finite."""

    def on_evaluate_end(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        """After an evaluation: the ``eval`` record (``epoch``, ``step`` and the task's metrics)."""

    def on_checkpoint(self, trainer: Trainer, tag: str, path: Path) -> None:
        """After the ``tag`` (``last`` or ``best``) checkpoint was written to ``path`` (rank 0 only)."""

    def on_nonfinite(
        self, trainer: Trainer, step: int, loss: float, grad_norm: float, action: str
    ) -> None:
        """Step ``step`` had a NaN/inf loss or gradient norm; ``action`` is ``stop`` (the run raises
        after this) or ``skip``."""

    def on_fit_end(self, trainer: Trainer, summary: Mapping[str, Any]) -> None:
        """The loop ended (finished, stopped or interrupted) and ``summary.json`` was written."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs back (JSON values); saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


CALLBACKS: Registry[type[Callback]] = Registry("callback")


class Callbacks:
    """The trainer's callbacks: calls an event on each in order, and saves and restores their state.

    ``internal`` are the trainer's own users of the events (logging: :class:`~distill.train.logging.RunLog`):
    they run first and keep no state in checkpoints."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise DistillError(
                    f"callbacks= takes Callback instances, got {type(cb).__name__}; subclass "
                    "distill.train.callbacks.Callback"
                )
        self.items = list(callbacks)
        self.internal: list[Callback] = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def emit(self, event: str, trainer: Trainer, *args: Any) -> None:
        for cb in [*self.internal, *self.items]:
            getattr(cb, event)(trainer, *args)

    def state(self) -> list[dict[str, Any]]:
        return [{"name": type(cb).__qualname__, "state": cb.state_dict()} for cb in self.items]

    def load(self, saved: Any, console: Console | None = None) -> None:
        """Hand each callback its saved state (matched by position and class name)."""
        saved = saved if isinstance(saved, list) else []
        for i, cb in enumerate(self.items):
            entry = saved[i] if i < len(saved) and isinstance(saved[i], dict) else None
            if entry is not None and entry.get("name") == type(cb).__qualname__:
                cb.load_state_dict(entry.get("state") or {})
            elif console is not None:
                console.print(
                    f"[yellow]warning[/]: the checkpoint holds no state for callback {i + 1} "
                    f"({type(cb).__qualname__}); it starts afresh",
                    soft_wrap=True,
                )


@CALLBACKS.register("early_stopping", about="stop when a metric has stopped improving")
class EarlyStopping(Callback):
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience`` evaluations in
    a row (``mode``: max for accuracy, min for a loss or perplexity). ``metric`` defaults to the task's
    primary metric. Its best value and count survive an interruption, so a resumed run stops where an
    uninterrupted one does."""

    def __init__(
        self,
        metric: str | None = None,
        mode: Literal["max", "min"] = "max",
        patience: int = 3,
        min_delta: float = 0.0,
    ) -> None:
        if mode not in ("max", "min"):
            raise ConfigError(f"early_stopping mode {mode!r} is not max or min; use one of them")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigError(
                f"early_stopping patience {patience!r} must be a whole number of evaluations >= 1"
            )
        if not isinstance(min_delta, (int, float)) or not min_delta >= 0 or math.isinf(min_delta):
            raise ConfigError(
                f"early_stopping min_delta {min_delta!r} must be a finite number >= 0"
            )
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best: float | None = None
        self.bad = 0  # evaluations in a row without improvement

    def on_evaluate_end(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        metric = self.metric or trainer.task.primary_metric
        if metric not in metrics:
            known = [k for k in metrics if k not in ("epoch", "step")]
            raise DistillError(
                f"early_stopping metric {metric!r} is not among the evaluation's metrics "
                f"({', '.join(known)}); set its metric option to one of them"
            )
        value = float(metrics[metric])
        if self.best is None and math.isfinite(value):
            improved = True
        elif self.best is None:
            improved = False
        elif self.mode == "max":
            improved = value > self.best + self.min_delta
        else:
            improved = value < self.best - self.min_delta
        if improved:
            self.best, self.bad = value, 0
            return
        self.bad += 1
        if self.bad >= self.patience:
            trainer.request_stop(
                f"early_stopping: {metric} has not improved on {self.best} for {self.bad} "
                f"evaluations (patience {self.patience})"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.bad = state.get("best"), int(state.get("bad", 0))
