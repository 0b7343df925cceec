"""Metrics as JSON lines (and TensorBoard on request), plus a rich progress bar."""

from __future__ import annotations

import json
import time
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


def truncate_metrics(run_dir: Path, step: int) -> int:
    """Drop ``metrics.jsonl`` lines written after ``step`` (and a torn last line); returns how many.

    A resumed run repeats the steps after its last checkpoint, so their old lines would be duplicates.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            keep = isinstance(record, dict) and int(record.get("step", 0)) <= step
        except (ValueError, TypeError):
            keep = False
        if keep:
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
