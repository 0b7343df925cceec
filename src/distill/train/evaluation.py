"""The trainer's evaluation of the student on the validation data, the same metrics on every rank.

Under DDP a task that shards evaluation (classification) predicts on each rank's slice and the metrics
come from all ranks' predictions; otherwise (or for a DataLoader given by the caller) rank 0 computes
them and hands them to the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distill.tasks.base import Task, TeacherPredictions
from distill.train.config import TrainConfig
from distill.train.distributed import (
    DistInfo,
    broadcast_buffers,
    broadcast_object,
    gather_objects,
)
from distill.train.sampling import make_loader


class Evaluator:
    """Evaluates a student on ``val_data`` (a dataset batched here by ``eval_batch_size``, a DataLoader
    used as given, or None: no metrics). The frozen ``teacher``'s validation predictions are worked
    out once."""

    def __init__(
        self,
        task: Task,
        val_data: Dataset | DataLoader | None,
        teacher: nn.Module | None,
        config: TrainConfig,
        dist: DistInfo,
        device: torch.device,
        fsdp: bool = False,
    ) -> None:
        self.task, self.val_data, self.teacher = task, val_data, teacher
        self.fsdp = fsdp  # sharded models: every rank takes part in each forward
        self.batch_size, self.group_by_length = config.eval_batch_size, config.group_by_length
        self.dist, self.device = dist, device
        self.teacher_predictions = TeacherPredictions(teacher) if teacher is not None else None

    def loader(self, shard: range | None = None) -> Iterable[Any] | None:
        """Batches of ``val_data`` (or of its indices in ``shard``, one rank's slice)."""
        if self.val_data is None or isinstance(self.val_data, DataLoader):
            return self.val_data
        order = None if shard is None else list(shard)
        # group_by_length: longest first, so batches pad little (metrics ignore order)
        if self.group_by_length and callable(getattr(self.val_data, "lengths", None)):
            lengths = self.val_data.lengths()
            order = sorted(
                range(len(lengths)) if order is None else order, key=lambda i: -lengths[i]
            )
        return make_loader(self.val_data, self.batch_size, order)

    def shard(self) -> range:
        """This rank's contiguous slice of ``val_data``'s indices: every sample on exactly one rank, no
        padding, and the slices in rank order are the set in its order."""
        n, rank, world = len(self.val_data), self.dist.rank, self.dist.world_size
        return range(n * rank // world, n * (rank + 1) // world)

    def evaluate(self, student: nn.Module) -> dict[str, float]:
        """The task's metrics of ``student``, the same on every rank (empty without ``val_data``)."""
        loader = self.loader()
        if loader is not None and self.fsdp:
            teacher = self.teacher_predictions or self.teacher
            metrics = self.task.evaluate(student, loader, teacher, self.device)
            return broadcast_object(metrics, self.dist)
        if (
            loader is not None
            and self.dist.enabled
            and getattr(self.task, "shards_evaluation", False)
            and not isinstance(self.val_data, DataLoader)
        ):
            shard = self.loader(self.shard())
            broadcast_buffers(student, self.dist)  # rank 0's BN statistics everywhere
            part = self.task.predictions(student, shard, self.teacher, self.device)
            return self.task.metrics_of(gather_objects(part, self.dist))
        metrics: dict[str, float] = {}
        if loader is not None and self.dist.is_main:
            # a DataLoader given by the caller may shuffle: stored predictions only for our own order
            ordered = not isinstance(self.val_data, DataLoader)
            teacher = self.teacher_predictions if ordered else self.teacher
            metrics = self.task.evaluate(student, loader, teacher, self.device)
        return broadcast_object(metrics, self.dist)
