"""What the distiller reads of a loss: :class:`DistillLoss` declares it once, with the defaults.

Every shipped loss subclasses it and overrides only what differs (``extra_inputs``, ``needs_same_shape``,
``build``, ``example_inputs``). A plain ``nn.Module`` still works as a loss (a test spy, a quick
experiment); :func:`contract_of` reads the same names from it, the one place that does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

Example = tuple[Any, Any]  # (student, teacher): tensors or lists of tensors


class DistillLoss(nn.Module):
    """A distillation loss: ``forward(student, teacher, **extras) -> scalar``.

    * ``extra_inputs``: names the distiller hands over from ``Batch.extras`` as keyword arguments
      (``labels``, ``index``, ``attention_mask``, ``boxes``...).
    * ``needs_same_shape``: False opts out of the distiller's student/teacher shape check (relation
      losses, losses with their own connectors).
    * ``build(student, teacher, **context)``: creates trainable parts sized by the data (connectors,
      heads, memory banks); called once on example tensors before the optimizer exists. ``builds``
      is True when a subclass overrides it.
    * ``example_inputs(batch_size, generator)``: ``(student, teacher)`` for the contract tests when the
      registry's ``inputs`` metadata fits none of the standard shapes; None otherwise.
    """

    extra_inputs: ClassVar[tuple[str, ...]] = ()
    needs_same_shape: ClassVar[bool] = True
    builds: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.builds = cls.build is not DistillLoss.build

    def build(self, student: Any, teacher: Any, **context: Any) -> None:
        """No trainable parts sized by the data."""

    @staticmethod
    def example_inputs(batch_size: int, generator: torch.Generator) -> Example | None:
        return None


@dataclass(frozen=True)
class LossContract:
    """The three things the distiller reads of a loss."""

    extra_inputs: tuple[str, ...]
    needs_same_shape: bool
    builds: bool


def contract_of(loss: nn.Module) -> LossContract:
    """``loss``'s contract: a :class:`DistillLoss` declares it; a plain ``nn.Module`` may carry the same
    attributes (``extra_inputs``, ``needs_same_shape``, ``build``) and gets the defaults for the rest."""
    if isinstance(loss, DistillLoss):
        return LossContract(tuple(loss.extra_inputs), loss.needs_same_shape, loss.builds)
    return LossContract(
        tuple(getattr(loss, "extra_inputs", ())),
        bool(getattr(loss, "needs_same_shape", True)),
        callable(getattr(loss, "build", None)),
    )
