"""Data order for the trainer: seeding, sharded shuffling per epoch and mid-epoch skipping on resume.

The order is a function of (seed, epoch) and the rank, so a resumed run sees the batches an uninterrupted
one would have seen, on one process or under ``torchrun``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from distill.train.distributed import DistInfo


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; ``deterministic`` also asks torch for deterministic kernels."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


class SkipSampler(Sampler[int]):
    """Yields the wrapped sampler's indices after dropping the first ``skip`` (for mid-epoch resume)."""

    def __init__(self, inner: Sampler[int], skip: int) -> None:
        self.inner, self.skip = inner, skip

    def __iter__(self) -> Iterator[int]:
        it = iter(self.inner)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)  # type: ignore[arg-type]


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler[int] | None) -> DataLoader:
    """distill's in-memory datasets batch by slicing tensors (their ``loader``); others get a DataLoader."""
    if hasattr(dataset, "loader"):
        return dataset.loader(batch_size, sampler=sampler)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False)


def epoch_loader(
    data: Dataset | DataLoader,
    local_batch: int,
    dist: DistInfo,
    seed: int,
    epoch: int,
    skip_batches: int = 0,
) -> Iterable[Any]:
    """This rank's batches of ``epoch``, shuffled from ``(seed, epoch)``, the first ``skip_batches`` left
    out. A ready DataLoader is used as given (its order is then the caller's)."""
    if isinstance(data, DataLoader):
        return data
    sampler: Sampler[int] = DistributedSampler(
        data, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed, drop_last=False
    )
    sampler.set_epoch(epoch)
    if skip_batches:
        sampler = SkipSampler(sampler, skip_batches * local_batch)
    return make_loader(data, local_batch, sampler)
