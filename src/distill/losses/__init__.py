"""Distillation losses: tensor-in, scalar-out ``nn.Module``s, one method per file.

Conventions every loss follows:

* ``forward(student, teacher, **extras) -> Tensor`` (a scalar). ``student``/``teacher`` are the tensors
  named by the term's taps (lists of tensors for multi-level methods).
* A loss that needs more than the two tensors (labels, sample indices, boxes) lists the names in the
  class attribute ``extra_inputs``; the distiller hands them over from the batch.
* Each module registers itself in :data:`LOSSES` with ``paper``, ``year``, ``kind`` and ``consumes``
  metadata (shown by ``distill list losses``), and cites the paper in its docstring.
"""

from __future__ import annotations

from distill.registry import Registry

LOSSES: Registry = Registry("loss")

from distill.losses import fitnet, kd  # noqa: E402,F401  (modules register themselves)
from distill.losses.fitnet import FitNetLoss, fitnet_loss  # noqa: E402
from distill.losses.kd import KDLoss, kd_loss  # noqa: E402

__all__ = ["LOSSES", "KDLoss", "kd_loss", "FitNetLoss", "fitnet_loss", "build_loss"]


def build_loss(name: str, **kwargs: object):
    """Instantiate a registered loss, checking ``kwargs`` against its constructor."""
    from distill.config.signature import check_kwargs

    cls = LOSSES.get(name)
    check_kwargs(cls, kwargs, what=f"loss {name!r}")
    return cls(**kwargs)
