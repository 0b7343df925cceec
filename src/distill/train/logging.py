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
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(f"{event}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
