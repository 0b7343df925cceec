"""The task interface the distiller and trainer rely on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError


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


class Task:
    """What a task adapter provides; every task subclasses it. Output names are used in taps as ``@name``
    (e.g. ``@logits``).

    ``split``, ``forward``, ``loss``, ``batch_metrics`` and ``evaluate`` are the task's job. The rest are
    optional hooks with defaults that do nothing, which the distiller, the recipe checks and ``compare``
    call or read on every task:

    * ``bind(student)``: called once by the ``Distiller``; a task whose loss is the student's own
      (detection builds the Ultralytics criterion here).
    * ``request(taps)``: called once by the recipe build with every tap of every term, so the task can
      turn on outputs that cost extra (text: attention weights for ``@attentions.N``).
    * ``count_items(batch)``: the number of items (valid tokens) the losses average over, for the
      trainer's one reduction rule across micro-batches and ranks; None (samples) by default.
    * ``augments_in_loader``: True when the task's datasets augment inside their loader (detection), so
      the teacher sees new inputs every epoch and ``distill.cache_teacher`` is refused.
    * ``latency_batch``: the large batch ``compare`` times the models at (None: compare's default).
    * ``classifies``: True when the ``logits`` output has one score per class of the data, which the
      recipe checks compare with the dataset's ``num_classes``.
    * ``per_token_outputs``: output kinds (``@kind.N``) shaped ``(B, T, ...)`` whose ``T`` follows each
      batch's padding, so ``distill.cache_teacher`` cannot keep them (text: hidden states, attentions).
    * ``named_inputs``: True when the model takes a dict of named tensors (``input_ids``, ...), not one
      tensor; QAT (one-tensor ``torch.export`` capture) refuses such runs before it writes anything.
    """

    name: str = ""
    primary_metric: str = ""  # higher is better; used to pick the best checkpoint
    augments_in_loader: bool = False
    latency_batch: int | None = None
    classifies: bool = False
    per_token_outputs: tuple[str, ...] = ()
    named_inputs: bool = False

    def bind(self, student: nn.Module) -> None:
        """Nothing to bind: the task loss does not depend on the student."""

    def request(self, taps: Iterable[str]) -> None:
        """Every output is computed anyway: nothing to turn on."""

    def count_items(self, batch: Batch) -> int | None:
        """How many items the task loss (and every term) averages over in ``batch``, when that number
        varies between batches of one size: a causal LM's valid target tokens. The trainer then weights
        each micro-batch by its share of the optimizer step's items, counted over all micro-batches and
        ranks (:mod:`distill.train.reduction`). None: every micro-batch weighs the same (samples)."""
        return None

    def split(self, batch: Any) -> Batch:
        raise NotImplementedError

    def forward(self, model: nn.Module, inputs: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def teacher_inputs(self, batch: Batch) -> Any:
        """What the teacher reads: the student's ``inputs``, unless the data gives the teacher its own
        (``causal_lm`` with a teacher of another tokenizer)."""
        return batch.inputs

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def batch_metrics(
        self, outputs: dict[str, torch.Tensor], batch: Batch
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def mix_targets(self, batch: Batch, partner: torch.Tensor, lam: float) -> Batch:
        """``batch`` whose inputs were mixed (mixup/cutmix: ``lam`` of sample ``i``, ``1 - lam`` of
        ``partner[i]``) with its targets mixed the same way. Tasks without mixable targets refuse."""
        raise DistillError(
            f"the {self.name or type(self).__name__} task cannot mix its targets; remove "
            "data.augment.mixup and cutmix"
        )

    # under DDP each rank runs predictions() on its slice of the validation set and every rank computes
    # metrics_of(all ranks' predictions); False: rank 0 runs evaluate() on the whole set alone
    shards_evaluation: bool = False

    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[Any],
        teacher: nn.Module | TeacherPredictions | None = None,
        device: torch.device | str = "cpu",
    ) -> dict[str, float]:
        raise NotImplementedError
