"""SIGINT and SIGTERM during :meth:`Trainer.fit <distill.train.trainer.Trainer.fit>`: once the loop runs,
a signal stops it at the next step boundary (``last`` is saved, then
:class:`~distill.errors.TrainingInterrupted` is raised); a second signal, or one before the loop
starts, raises at once. Handlers are installed on the main thread only and restored on leaving."""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch

from distill.errors import TrainingInterrupted
from distill.train.distributed import DistInfo, any_rank

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """A context manager that catches SIGINT/SIGTERM for the training loop (see the module)."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the signal received while the loop ran
        self.accepting = False  # the loop runs: a signal stops it at the next step boundary
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self.signum, self.accepting = None, False
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in HANDLED}
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous, self.accepting = {}, False

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is not None or not self.accepting:
            raise TrainingInterrupted(signum, None)
        self.signum = signum

    def agree(self, dist: DistInfo, device: torch.device) -> None:
        """Under DDP, a signal one rank received counts on every rank (a collective: all ranks call)."""
        if dist.enabled:
            self.signum = any_rank(self.signum or 0, dist, device) or None
