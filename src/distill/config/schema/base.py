"""What every recipe section builds on: the ``extra="forbid"`` base model, name lookup in the registries
(a miss becomes a validation error with near matches), and a term weight given as a number or a schedule."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, FiniteFloat, model_validator

from distill.data import DATASETS
from distill.losses import LOSSES
from distill.models import MODELS
from distill.projectors import PROJECTORS
from distill.registry import Registry, UnknownNameError, check_kwargs
from distill.schedules import SCHEDULES
from distill.tasks import TASKS


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


REGISTRIES: dict[str, Registry] = {
    "loss": LOSSES,
    "model": MODELS,
    "dataset": DATASETS,
    "task": TASKS,
    "schedule": SCHEDULES,
    "projector": PROJECTORS,
}


def _lookup(kind: str, name: str) -> Any:
    """Resolve ``name`` in the registry of ``kind``."""
    try:
        return REGISTRIES[kind].get(name)
    except UnknownNameError as err:
        raise ValueError(str(err)) from None


class ScheduleSpec(BaseModel):
    """``{schedule: linear_warmup, value: 8.0, warmup_epochs: 20}``: the other keys go to the schedule."""

    model_config = ConfigDict(extra="allow")
    schedule: str

    @model_validator(mode="after")
    def _check(self) -> ScheduleSpec:
        cls = _lookup("schedule", self.schedule)
        check_kwargs(cls, self.model_extra or {}, what=f"schedule {self.schedule!r}")
        return self


Weight = FiniteFloat | ScheduleSpec  # NaN or inf would poison every step's loss


def _weight(value: Any) -> Any:
    """A mapping is a schedule: validate it as one so its own error (bad option) is the one reported."""
    return ScheduleSpec.model_validate(value) if isinstance(value, dict) else value
