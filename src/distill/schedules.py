"""Weight schedules for terms: functions of the (fractional) epoch returning a multiplier.

A term's ``weight`` is a float or a :class:`Schedule`. In recipes:

    weight: 8.0                                              # constant
    weight: {schedule: linear_warmup, value: 8.0, warmup_epochs: 20}   # DKD's warm-up
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from distill.registry import Registry

SCHEDULES: Registry = Registry("schedule")


class Schedule:
    """Base class: ``schedule(epoch) -> weight`` where ``epoch`` is fractional (step / steps_per_epoch)."""

    def __call__(self, epoch: float) -> float:  # pragma: no cover - interface
        raise NotImplementedError


@SCHEDULES.register("constant")
@dataclass
class Constant(Schedule):
    value: float = 1.0

    def __call__(self, epoch: float) -> float:
        return self.value


@SCHEDULES.register("linear_warmup")
@dataclass
class LinearWarmup(Schedule):
    """``value * min(epoch / warmup_epochs, 1)``: DKD (Zhao et al. 2022) warms its loss up over 20 epochs."""

    value: float = 1.0
    warmup_epochs: float = 1.0

    def __call__(self, epoch: float) -> float:
        if self.warmup_epochs <= 0:
            return self.value
        return self.value * min(epoch / self.warmup_epochs, 1.0)


@SCHEDULES.register("cosine_decay")
@dataclass
class CosineDecay(Schedule):
    """From ``value`` to ``final`` along a half cosine over ``epochs``."""

    value: float = 1.0
    final: float = 0.0
    epochs: float = 1.0

    def __call__(self, epoch: float) -> float:
        t = min(max(epoch / self.epochs, 0.0), 1.0) if self.epochs > 0 else 1.0
        return self.final + (self.value - self.final) * 0.5 * (1 + math.cos(math.pi * t))


def weight_at(weight: float | Schedule, epoch: float) -> float:
    return float(weight(epoch)) if callable(weight) else float(weight)
