"""The task interface the distiller and trainer rely on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


def move_to(value: Any, device: torch.device | str) -> Any:
    """Move tensors inside nested lists/tuples/dicts to ``device`` (non-blocking)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: move_to(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(move_to(v, device) for v in value)
    return value


@dataclass
class Batch:
    """A batch split by a task: model ``inputs``, task ``targets`` and named ``extras`` for losses.

    ``extras`` always holds what losses may declare in ``extra_inputs`` (``labels``, ``index``, ...).
    """

    inputs: Any
    targets: Any
    extras: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            move_to(self.inputs, device),
            move_to(self.targets, device),
            move_to(self.extras, device),
        )

    def __len__(self) -> int:
        first = (
            self.inputs
            if isinstance(self.inputs, torch.Tensor)
            else next(iter(self.inputs.values()))
        )
        return int(first.shape[0])


class TeacherPredictions:
    """A frozen teacher with its top-1 predictions over an evaluation loader, worked out on the first
    evaluation and reused by the next ones: the trainer evaluates the same unshuffled validation set every
    epoch, and the teacher does not change. Pass it where ``Task.evaluate`` takes ``teacher``, for loaders
    whose order is fixed (a shuffling loader would pair stored predictions with other samples whenever
    a batch's targets happen to match).

    ``top1`` holds one ``(B,)`` tensor per batch, ``targets`` the batch's targets; a batch whose targets
    differ from those seen (another loader or order) is run through the teacher again and the stored
    predictions are replaced after that pass.
    """

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher
        self.top1: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def known(self, index: int, targets: torch.Tensor) -> torch.Tensor | None:
        """The stored top-1 of batch ``index`` if it had these ``targets``, else None."""
        if index < len(self.targets) and torch.equal(self.targets[index], targets):
            return self.top1[index]
        return None


@runtime_checkable
class Task(Protocol):
    """What a task adapter provides. Output names are used in taps as ``@name`` (e.g. ``@logits``)."""

    name: str
    primary_metric: str  # higher is better; used to pick the best checkpoint

    def split(self, batch: Any) -> Batch: ...

    def forward(self, model: nn.Module, inputs: Any) -> dict[str, torch.Tensor]: ...

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor: ...

    def batch_metrics(
        self, outputs: dict[str, torch.Tensor], batch: Batch
    ) -> dict[str, torch.Tensor]: ...

    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[Any],
        teacher: nn.Module | TeacherPredictions | None = None,
        device: torch.device | str = "cpu",
    ) -> dict[str, float]: ...
