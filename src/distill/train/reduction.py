"""How an optimizer step's micro-batches are weighted: one reduction rule across gradient accumulation
and processes.

A task that averages its loss over *items* (a causal LM: the valid target tokens, whose number varies
from batch to batch) says how many a batch holds (:meth:`Task.count_items`). Each loss of such a task
returns the mean over its micro-batch's items; weighting micro-batch ``i`` of rank ``r`` by
``world_size * count[r, i] / total`` (``total`` summed over the step's micro-batches on every rank, one
all-reduce) makes the step's gradient, after DDP's average over ranks, the sum over every item of the
step divided by their global count: the gradient of one large batch, whatever the split. Dividing each
micro-batch's mean by the number of micro-batches instead (the rule for tasks that do not count, whose
items are samples of equal weight) overweights the tokens of short micro-batches: the gradient
accumulation bug TRL and Hugging Face Trainer fixed with ``num_items_in_batch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from distill.tasks.base import Batch, Task
from distill.train.distributed import DistInfo


class StepWeights(NamedTuple):
    """Per micro-batch: ``loss`` scales what goes into ``backward``, ``metric`` what is logged (the
    rank's own token-weighted mean)."""

    loss: list[float]
    metric: list[float]


def micro_batch_weights(
    task: Task, batches: Sequence[Batch], info: DistInfo, device: torch.device
) -> StepWeights | None:
    """Weights of the (split) micro-batches ``batches`` of one optimizer step (see the module
    docstring); None for a task that does not count items (the trainer divides by their number)."""
    n = len(batches)
    counts: list[Any] = [task.count_items(batch) for batch in batches]
    if any(c is None for c in counts):
        return None
    counts = [int(c) for c in counts]
    local = float(sum(counts))
    total = local
    if info.enabled and dist.is_initialized():
        summed = torch.tensor([local], dtype=torch.float64, device=device)
        dist.all_reduce(summed)
        total = float(summed.item())
    loss = [info.world_size * c / total if total else 0.0 for c in counts]
    metric = [c / local if local else 1.0 / n for c in counts]
    return StepWeights(loss, metric)
