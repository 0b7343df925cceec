"""Metrics to the loggers a run names (JSON lines by default; see :mod:`distill.train.loggers`), and
:class:`RunLog`, the callback that writes them and updates the progress display
(:mod:`distill.train.progress`)."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.progress import (
    Progress,
)

from distill.errors import DistillError
from distill.io import write_text
from distill.train.callbacks import Callback
from distill.train.loggers import DEFAULT_LOGGERS, LOGGERS, Logger, RunInfo
from distill.train.progress import PlainProgress

if TYPE_CHECKING:
    from distill.train.trainer import Trainer


class MetricsLogger:
    """Hands each record to the loggers ``loggers`` names (:mod:`distill.train.loggers`; ``tensorboard``
    adds ``tensorboard``); does nothing when not ``enabled`` (ranks other than 0).

    ``recipe`` (the resolved recipe as JSON values) and ``meta`` (where and how the run runs) go to the
    loggers that record them (W&B, MLflow). :meth:`close` takes the summary, or None for a failed run.
    """

    def __init__(
        self,
        run_dir: Path | None,
        tensorboard: bool = False,
        enabled: bool = True,
        loggers: Sequence[str | tuple[str, Mapping[str, Any]]] = DEFAULT_LOGGERS,
        recipe: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir) if run_dir else None
        self.path = self.run_dir / "metrics.jsonl" if self.run_dir and enabled else None
        self.loggers: list[Logger] = []
        if not enabled:
            return
        if self.run_dir is not None:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise DistillError(
                    f"cannot create run directory {run_dir}: {err.strerror}; pick a writable path"
                ) from None
        specs = [(s, {}) if isinstance(s, str) else (s[0], dict(s[1])) for s in loggers]
        if tensorboard and "tensorboard" not in [name for name, _ in specs]:
            specs.append(("tensorboard", {}))
        run = RunInfo(self.run_dir, dict(recipe) if recipe else None, dict(meta or {}))
        try:
            for name, options in specs:
                logger = LOGGERS.create(name, options)
                logger.start(run)
                self.loggers.append(logger)
        except BaseException:
            self.close(None)  # the ones already started end their runs
            raise

    def log(self, event: str, values: dict[str, Any]) -> None:
        """Record ``{"event": event, "time": ..., **values}``; ``values`` should include ``step``."""
        record = {"time": round(time.time(), 3), **values}
        step = int(values.get("step", 0))
        for logger in self.loggers:
            logger.log(event, record, step)

    def close(self, summary: Mapping[str, Any] | None = None) -> None:
        """End every logger's run (``summary`` None: the run failed); a second call does nothing."""
        loggers, self.loggers = self.loggers, []
        failure: BaseException | None = None
        for logger in loggers:  # each one ends its run, whatever another one raised
            try:
                logger.finish(summary)
            except BaseException as err:
                failure = failure or err
        if failure is not None:
            raise failure


def truncate_metrics(run_dir: Path, step: int, eval_steps: Iterable[int] | None = None) -> int:
    """Drop the ``metrics.jsonl`` lines a run resumed at ``step`` writes again (and a torn last line);
    returns how many. ``metrics.csv`` loses the same rows.

    ``train`` lines after ``step`` go, ``nonfinite`` lines from ``step`` on (they carry the 0-based
    index of the step taken) and ``eval`` lines of other steps than ``eval_steps``, the evaluations the
    checkpoint's history holds (when not given: those after ``step``). ``step`` 0 empties the file.
    """
    evaluated = None if eval_steps is None else set(eval_steps)

    def keep(record: Mapping[str, Any]) -> bool:
        at = int(record.get("step") or 0)
        if record.get("event") == "nonfinite":
            return at < step
        if record.get("event") == "eval" and evaluated is not None:
            return at in evaluated
        return at <= step

    _truncate_csv(Path(run_dir) / "metrics.csv", keep)
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
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


def _truncate_csv(path: Path, keep: Callable[[Mapping[str, Any]], bool]) -> None:
    if not path.is_file():
        return
    rows = list(csv.reader(io.StringIO(path.read_text(), newline="")))
    if not rows:
        return
    header, kept = rows[0], [rows[0]]
    for row in rows[1:]:
        try:
            ok = len(row) == len(header) and keep(dict(zip(header, row, strict=True)))
        except ValueError:
            ok = False
        if ok:
            kept.append(row)
    if len(kept) < len(rows):
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(kept)
        write_text(path, buffer.getvalue())


def format_values(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in values.items())


def add_metrics(sums: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``sums`` plus one step's ``values``, key by key (a new key starts at its value). Tensors with the
    keys of the sums are added in one fused call: the same float additions as one by one."""
    if sums and list(sums) == list(values):  # the same keys in the same order
        totals, step = list(sums.values()), list(values.values())
        if all(isinstance(v, torch.Tensor) for v in (*totals, *step)):
            try:
                return dict(zip(sums, torch._foreach_add(totals, step), strict=True))
            except (RuntimeError, TypeError):  # dtypes or devices foreach does not mix
                pass
    out = dict(sums)
    for k, v in values.items():
        out[k] = out[k] + v if k in out else v
    return out


def read_metrics(sums: Mapping[str, Any]) -> dict[str, float]:
    """``sums`` as floats: tensors read from the device in one transfer when they stack (one host
    sync per logging step, not one per metric)."""
    tensors = [v for v in sums.values() if isinstance(v, torch.Tensor)]
    if len(tensors) == len(sums) > 1 and all(
        t.ndim == 0 and t.is_floating_point() for t in tensors
    ):
        try:
            return dict(zip(sums, torch.stack(tensors).tolist(), strict=True))
        except (RuntimeError, TypeError):  # devices that do not stack
            pass
    return {k: float(v) for k, v in sums.items()}


class RunLog(Callback):
    """Logging as a user of the trainer's events: each step's metrics, averaged over ``log_every``
    applied steps, become a ``train`` record and the progress bar's text; each evaluation an ``eval``
    record and a printed line; each non-finite step a ``nonfinite`` record; the summary ends the
    loggers' runs. The trainer runs it before the user's callbacks, calls :meth:`start_epoch` and
    runs the loop inside it (``with``: the progress bar shows; a failure ends the loggers' runs as
    failed).

    A run stopped inside a logging window saves the window (:meth:`window`, in the checkpoint) and the
    resumed run carries it on (``window`` given back), so its records equal an uninterrupted run's."""

    def __init__(
        self,
        logger: MetricsLogger,
        progress: Progress | PlainProgress,
        total: int,
        steps_per_epoch: int,
        epochs: int,
        start_step: int = 0,
        window: Mapping[str, Any] | None = None,
    ) -> None:
        self.logger, self.progress = logger, progress
        self.total, self.steps_per_epoch, self.epochs = total, steps_per_epoch, epochs
        self.start_step = start_step  # a resumed run starts past 0
        self.bar: Any = None
        # a rich bar that is off (progress: false, other ranks) shows nothing: no update per step
        self.shows = not (isinstance(progress, Progress) and progress.disable)
        self._reset()
        self._carried = dict(window) if window else None  # taken up by the first start_epoch

    def __enter__(self) -> RunLog:
        self.progress.__enter__()
        self.bar = self.progress.add_task(
            "train", total=self.total, completed=self.start_step, info=""
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.progress.__exit__(*exc)
        finally:
            if exc[0] is not None:  # the loggers end their runs as failed
                self.logger.close(None)

    def start_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` (0-based) starts: averages and the samples/s rate start afresh."""
        self.progress.update(self.bar, description=f"epoch {epoch + 1}/{self.epochs}")
        self._reset()
        if self._carried is not None:  # resumed inside this epoch: the window goes on
            self.sums = dict(self._carried["sums"])
            self.seen, self.count = int(self._carried["seen"]), int(self._carried["count"])
            self._carried = None

    def _reset(self) -> None:
        self.sums: dict[str, Any] = {}
        self.seen, self.count, self.started = 0, 0, time.perf_counter()

    def window(self) -> dict[str, Any]:
        """The steps averaged since the last record, as JSON values: ``sums`` (each metric's sum, a
        float32 sum kept as its exact float value), ``count`` (applied steps) and ``seen`` (samples)."""
        sums = {k: float(v) for k, v in self.sums.items()}
        return {"sums": sums, "count": self.count, "seen": self.seen}

    def on_step_end(self, trainer: Trainer, step: int, metrics: Mapping[str, Any]) -> None:
        self.seen += trainer.step_samples
        lr = metrics["lr"]
        if "loss" in metrics:  # not a skipped non-finite step
            self.count += 1
            self.sums = add_metrics(self.sums, {k: v for k, v in metrics.items() if k != "lr"})
        if self.count and (step % trainer.config.log_every == 0 or step == self.total):
            values = {k: v / self.count for k, v in read_metrics(self.sums).items()}
            if trainer.skipped_steps:
                values["skipped_steps"] = trainer.skipped_steps
            if trainer.scaler_skipped:
                values["scaler_skipped_steps"] = trainer.scaler_skipped
            rate = self.seen * trainer.dist.world_size / (time.perf_counter() - self.started)
            epoch = trainer.epoch + trainer.epoch_step / self.steps_per_epoch
            record = {"step": step, "epoch": epoch, "lr": lr, "samples_per_s": round(rate, 1)}
            self.logger.log("train", {**record, **values})
            if self.shows:
                self.progress.update(self.bar, info=format_values(values))
            self._reset()
        if self.shows:
            self.progress.update(self.bar, completed=step)

    def on_nonfinite(
        self, trainer: Trainer, step: int, loss: float, grad_norm: float, action: str
    ) -> None:
        record = {"step": step, "loss": loss, "grad_norm": grad_norm, "action": action}
        self.logger.log("nonfinite", record)

    def on_evaluate_end(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        self.logger.log("eval", dict(metrics))
        if trainer.dist.is_main:
            epoch = metrics["epoch"]
            shown = {k: v for k, v in metrics.items() if k not in ("epoch", "step", "samples")}
            label = (
                f"epoch {epoch}"
                if isinstance(epoch, int)
                else f"epoch {epoch:.2f} (step {trainer.global_step}, partial)"
            )
            self.progress.console.print(f"{label}: {format_values(shown)}")

    def on_fit_end(self, trainer: Trainer, summary: Mapping[str, Any]) -> None:
        self.logger.close(summary)
