"""Distillation losses: tensor-in, scalar-out ``nn.Module``s, one method per file.

Conventions every loss follows (:class:`~distill.losses.base.DistillLoss`, which each loss subclasses,
declares the attributes below with their defaults; helpers several losses share are in ``_common.py``):

* ``forward(student, teacher, **extras) -> Tensor`` (a scalar). ``student``/``teacher`` are the tensors
  named by the term's taps (lists of tensors for multi-level methods).
* A loss that needs more than the two tensors (labels, sample indices, boxes) lists the names in the
  class attribute ``extra_inputs``; the distiller hands them over from the batch.
* A loss with trainable parts sized by the data (embedding heads, connectors, fusion modules, memory
  banks) creates them in ``build(student, teacher, **context)``; the distiller calls it once with
  example tensors before the optimizer exists (``context`` carries ``num_samples``). Those parts train
  with the student and are never exported with it. Teacher tensors never receive gradients.
* Each module registers itself in :data:`LOSSES` with metadata. Shown by ``distill list losses``:
  ``paper``, ``year``, ``kind`` (logit, feature, relation, contrastive), ``consumes`` (plain words).
  Used by the contract tests and ``docs/methods.md``: ``inputs`` (``logits``, ``maps`` (B, C, H, W),
  ``vectors`` (B, D) or ``maps_list`` for multi-level methods), ``identity`` (``"zero"`` when the
  loss is 0 for identical student and teacher inputs, else ``None``), ``batch_invariant`` (the value
  is unchanged when the batch is repeated; default True), ``taps`` (which taps suit it) and ``weight``
  (recommended weight next to a task loss of weight 1).
* The module docstring cites the paper and states the paper's defaults, which are the constructor's.

Every module in this package is imported (and so registered) when the package is imported.
"""

from __future__ import annotations

import importlib
import math
import pkgutil

from distill.errors import ConfigError
from distill.registry import Registry

LOSSES: Registry = Registry("loss")

for _module in pkgutil.iter_modules(__path__):  # modules register themselves
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
from distill.losses.fitnet import FitNetLoss, fitnet_loss  # noqa: E402
from distill.losses.kd import KDLoss, kd_loss  # noqa: E402

__all__ = ["LOSSES", "KDLoss", "kd_loss", "FitNetLoss", "fitnet_loss", "build_loss"]


def build_loss(name: str, **kwargs: object):
    """Instantiate a registered loss, checking ``kwargs`` against its constructor."""
    check_temperatures(name, kwargs)
    return LOSSES.create(name, kwargs)


# logits divided by a temperature (and the T² factor) stay finite in float32 inside this range
TEMPERATURES = (1e-4, 1e4)


def check_temperatures(name: str, options: dict[str, object]) -> None:
    """A positive ``temperature``/``tau`` option outside :data:`TEMPERATURES` (or NaN) is refused here,
    before it overflows the first step; zero and negative values are left to the loss's own check."""
    low, high = TEMPERATURES
    for key, value in options.items():
        if key not in ("temperature", "tau") or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and (
            math.isnan(value) or value > high or 0 < value < low
        ):
            raise ConfigError(
                f"loss {name!r}: {key}={value!r} is outside [{low:g}, {high:g}], where softened logits "
                "overflow or vanish; typical values are 1 to 8"
            )
