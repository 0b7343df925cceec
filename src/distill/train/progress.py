"""The progress display of a run: a rich progress bar on a terminal, plain whole lines elsewhere (a
pipe, a file, ``nohup``, a batch scheduler's log)."""

from __future__ import annotations

import os
import time
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

PLAIN_EVERY_S = 30.0  # seconds between plain progress lines; DISTILL_PROGRESS_SECONDS overrides it


def make_progress(enabled: bool, console: Console | None = None) -> Progress | PlainProgress:
    """A rich progress bar on a terminal (or in Jupyter); elsewhere (a pipe, a file, ``nohup``, a batch
    scheduler's log) a :class:`PlainProgress` that prints whole lines instead of redrawing a bar."""
    console = console or Console()
    if enabled and not (console.is_terminal or console.is_jupyter):
        return PlainProgress(console, _plain_every())
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


def _plain_every() -> float:
    raw = os.environ.get("DISTILL_PROGRESS_SECONDS")
    if raw is None:
        return PLAIN_EVERY_S
    try:
        every = float(raw)
    except ValueError:
        every = -1.0
    if not every >= 0:
        raise DistillError(
            f"DISTILL_PROGRESS_SECONDS={raw!r} is not a number of seconds >= 0; e.g. 30 (0: a line "
            "at every logged step)"
        )
    return every


class PlainProgress:
    """The part of :class:`rich.progress.Progress` the trainer uses, written as plain lines for logs that
    are not a terminal: one line at a step that brought new loss values (every ``train.log_every``
    steps) once ``every_s`` seconds passed since the last line, one when the task completes, and one on
    leaving when the last step counted was not printed yet (a stopped run), e.g.
    ``epoch 1/6 step 120/938 (12%) loss=0.523 kd=0.411 | 9.8 steps/s, elapsed 0:00:12, eta 0:01:23``.
    """

    def __init__(self, console: Console, every_s: float = PLAIN_EVERY_S) -> None:
        self.console, self.every_s = console, every_s
        self._tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        for task_id, task in self._tasks.items():  # a run stopped early still says where it stopped
            if task["printed"] != task["completed"]:
                self._line(task_id)

    def add_task(
        self, description: str, total: float | None = None, completed: float = 0, **fields: Any
    ) -> int:
        task_id = len(self._tasks)
        now = time.monotonic()
        self._tasks[task_id] = {
            "description": description,
            "total": total,
            "completed": completed,
            "fields": dict(fields),
            "start": now,
            "start_completed": completed,
            "last_line": now,
            "printed": completed,
        }
        return task_id

    def update(
        self,
        task_id: int,
        *,
        description: str | None = None,
        completed: float | None = None,
        **fields: Any,
    ) -> None:
        task = self._tasks[task_id]
        if description is not None:
            task["description"] = description
        if completed is not None:
            task["completed"] = completed
        task["fields"].update(fields)
        # new values come just before their step is counted: the line waits for that step
        task["pending"] = task.get("pending", False) or "info" in fields
        if completed is None or task["completed"] == task["printed"]:
            return
        done = task["total"] is not None and task["completed"] >= task["total"]
        due = time.monotonic() - task["last_line"] >= self.every_s
        if done or (task["pending"] and due):
            self._line(task_id)

    def _line(self, task_id: int) -> None:
        task = self._tasks[task_id]
        now = time.monotonic()
        done, total = task["completed"], task["total"]
        elapsed = now - task["start"]
        rate = (done - task["start_completed"]) / elapsed if elapsed > 0 else 0.0
        parts = [str(task["description"])]
        if total:
            parts.append(f"step {int(done)}/{int(total)} ({100 * done / total:.0f}%)")
        else:
            parts.append(f"step {int(done)}")
        if task["fields"].get("info"):
            parts.append(str(task["fields"]["info"]))
        timing = f"| {rate:.3g} steps/s, elapsed {_clock(elapsed)}"
        if total and rate > 0 and done < total:
            timing += f", eta {_clock((total - done) / rate)}"
        parts.append(timing)
        self.console.print(" ".join(parts), soft_wrap=True, markup=False, highlight=False)
        task["last_line"], task["printed"], task["pending"] = now, done, False


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
