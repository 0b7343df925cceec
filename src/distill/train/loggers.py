"""Where a run's metrics go: ``train.loggers`` names them (``[jsonl, csv, tensorboard, wandb, mlflow]``).

A logger subclasses :class:`Logger` and overrides the events it needs: :meth:`Logger.start` once with the
run's :class:`RunInfo` (the resolved recipe and where and how it runs), :meth:`Logger.log` for each
record (``train`` lines every ``train.log_every`` steps, ``eval`` after each evaluation, ``nonfinite``),
:meth:`Logger.finish` once with the trainer's summary (None when the run failed). Only rank 0 logs.
A plugin module registers its own with ``@LOGGERS.register("name")``; recipe options reach its
constructor (``{name: wandb, options: {project: kd}}``).

The file loggers write into the run folder (``metrics.jsonl``, ``metrics.csv``, ``tensorboard/``) and
do nothing without one; W&B and MLflow log to wherever their own settings point (``WANDB_MODE``,
``WANDB_DIR``, ``MLFLOW_TRACKING_URI``, or the options below). A resumed run starts a new W&B or MLflow
run that carries on from the resumed step.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.errors import DistillError
from distill.io import write_error, write_text
from distill.registry import Registry

DEFAULT_LOGGERS = ("jsonl",)
CSV_FIRST = (
    "event",
    "step",
    "time",
)  # the CSV's leading columns; the values' keys follow as they come


@dataclass
class RunInfo:
    """What a logger learns at the start: ``recipe`` is the resolved recipe as JSON values (None for a
    Trainer built by hand), ``meta`` where it runs (``device``, ``world_size``, ``torch``, ``start_step``)."""

    run_dir: Path | None
    recipe: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        if self.recipe and self.recipe.get("name"):
            return str(self.recipe["name"])
        return self.run_dir.name if self.run_dir else None


class Logger:
    """One destination of a run's records; every method does nothing by default."""

    def start(self, run: RunInfo) -> None:
        """Before the first record."""

    def log(self, event: str, values: Mapping[str, Any], step: int) -> None:
        """One record: ``values`` holds ``step``, ``time`` and the event's numbers (or strings)."""

    def finish(self, summary: Mapping[str, Any] | None) -> None:
        """After the last record: ``summary`` is what ``summary.json`` holds, None when the run failed."""


LOGGERS: Registry[type[Logger]] = Registry("logger")


def scalars(values: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a record (not ``step``/``time``, not booleans or strings)."""
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time")
    }


@LOGGERS.register("jsonl")
class JsonlLogger(Logger):
    """``metrics.jsonl``: one JSON object per record, ``{"event": ..., "time": ..., "step": ...}``."""

    def start(self, run: RunInfo) -> None:
        self.path = run.run_dir / "metrics.jsonl" if run.run_dir else None

    def log(self, event: str, values: Mapping[str, Any], step: int) -> None:
        if self.path is None:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps({"event": event, **values}) + "\n")
        except OSError as err:
            raise write_error(err, self.path.parent, "metrics") from None


@LOGGERS.register("csv")
class CsvLogger(Logger):
    """``metrics.csv``: the records of ``metrics.jsonl`` as rows (``event, step, time`` and then one
    column per value, empty where a record has none). A record with a new key rewrites the file with
    the wider header."""

    def start(self, run: RunInfo) -> None:
        self.path = run.run_dir / "metrics.csv" if run.run_dir else None
        self.columns: list[str] = list(CSV_FIRST)
        if self.path is not None and self.path.is_file():  # a resumed run appends
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), None)
            if header:
                self.columns = header

    def log(self, event: str, values: Mapping[str, Any], step: int) -> None:
        if self.path is None:
            return
        row = {"event": event, **{k: _cell(v) for k, v in values.items()}}
        new = [k for k in row if k not in self.columns]
        try:
            if new or not self.path.is_file():
                self.columns += new
                text = self.path.read_text() if self.path.is_file() else ""
                old = list(csv.DictReader(io.StringIO(text)))
                write_text(self.path, _csv_text(self.columns, [*old, row]))
            else:
                with open(self.path, "a", newline="") as f:
                    csv.DictWriter(f, self.columns).writerow(row)
        except OSError as err:
            raise write_error(err, self.path.parent, "metrics") from None


def _cell(value: Any) -> Any:
    return value if isinstance(value, (int, float, str)) else json.dumps(value)


def _csv_text(columns: list[str], rows: list[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


@LOGGERS.register("tensorboard")
class TensorBoardLogger(Logger):
    """``tensorboard/``: each number of a record as the scalar ``<event>/<key>`` at its step."""

    def start(self, run: RunInfo) -> None:
        self.writer = None
        if run.run_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise DistillError(
                "tensorboard logging needs the tensorboard package: pip install 'distill[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(str(run.run_dir / "tensorboard"))

    def log(self, event: str, values: Mapping[str, Any], step: int) -> None:
        if self.writer is not None:
            for key, value in scalars(values).items():
                self.writer.add_scalar(f"{event}/{key}", value, step)

    def finish(self, summary: Mapping[str, Any] | None) -> None:
        if self.writer is not None:
            self.writer.close()


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` as ``{"train.lr": 0.1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def final_numbers(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The summary without its per-evaluation history: ``best.top1``, ``last.top1``, ``steps``..."""
    return flatten({k: v for k, v in summary.items() if k != "history"})


def _needs(package: str, extra: str) -> DistillError:
    return DistillError(
        f"train.loggers {extra} needs the {package} package: pip install 'distill[{extra}]' "
        f"(or drop {extra} from train.loggers)"
    )


# W&B and MLflow: imported here so that they register
from distill.train import trackers as _trackers  # noqa: E402, F401
