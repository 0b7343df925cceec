"""Metrics as JSON lines (and TensorBoard on request), plus a rich progress bar."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from distill.errors import DistillError
from distill.io import write_error, write_text


class MetricsLogger:
    """Appends one JSON object per line to ``metrics.jsonl``; mirrors scalars to TensorBoard if asked."""

    def __init__(
        self, run_dir: Path | None, tensorboard: bool = False, enabled: bool = True
    ) -> None:
        self.path = Path(run_dir) / "metrics.jsonl" if run_dir and enabled else None
        self.writer = None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise DistillError(
                    f"cannot create run directory {run_dir}: {err.strerror}; pick a writable path"
                ) from None
        if tensorboard and run_dir and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise DistillError(
                    "tensorboard logging needs the tensorboard package: pip install 'distill[tensorboard]'"
                ) from None
            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, event: str, values: dict[str, Any]) -> None:
        """Write ``{"event": event, "time": ..., **values}``; ``values`` should include ``step``."""
        record = {"event": event, "time": round(time.time(), 3), **values}
        step = int(values.get("step", 0))
        if self.path is not None:
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as err:
                raise write_error(err, self.path.parent, "metrics") from None
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(f"{event}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def truncate_metrics(run_dir: Path, step: int, eval_steps: Iterable[int] | None = None) -> int:
    """Drop the ``metrics.jsonl`` lines a run resumed at ``step`` writes again (and a torn last line);
    returns how many.

    ``train`` lines after ``step`` go, ``nonfinite`` lines from ``step`` on (they carry the 0-based
    index of the step taken) and ``eval`` lines of other steps than ``eval_steps``, the evaluations the
    checkpoint's history holds (when not given: those after ``step``). ``step`` 0 empties the file.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    evaluated = None if eval_steps is None else set(eval_steps)

    def keep(record: dict[str, Any]) -> bool:
        at = int(record.get("step", 0))
        if record.get("event") == "nonfinite":
            return at < step
        if record.get("event") == "eval" and evaluated is not None:
            return at in evaluated
        return at <= step

    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            ok = isinstance(record, dict) and keep(record)
        except (ValueError, TypeError):
            ok = False
        if ok:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        write_text(path, "".join(k + "\n" for k in kept))
    return dropped


def make_progress(enabled: bool, console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not enabled,
        transient=False,
    )


def format_values(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in values.items())
