"""Data order for the trainer: seeding, sharded shuffling per epoch, batches of similar length and
mid-epoch skipping on resume.

The order is a function of (seed, epoch) and the rank, so a resumed run sees the batches an uninterrupted
one would have seen, on one process or under ``torchrun``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from distill.data.base import PlansItsBatches, SizedByLength, make_loader
from distill.errors import DistillError
from distill.train.distributed import DistInfo

MEGABATCH = 50  # batches per sorted group, as transformers' LengthGroupedSampler


def seed_everything(seed: int, deterministic: bool = False, warn_only: bool = False) -> None:
    """Seed Python, NumPy and torch; ``deterministic`` also asks torch for deterministic kernels, and
    with ``warn_only`` an operation that has none warns instead of raising (the trainer's choice on CUDA,
    where adaptive average pooling's backward, in every shipped CNN, has no deterministic kernel)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
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


class LengthGroupedSampler(Sampler[int]):
    """The wrapped sampler's indices regrouped so that each batch holds items of similar length.

    The shuffled indices are taken ``megabatch`` batches at a time; each group is sorted by ``lengths``
    (longest first) and cut into batches of ``batch_size``, as transformers' ``group_by_length`` does.
    The full batches of the epoch are then shuffled (``seed``, ``epoch``), so short and long batches
    alternate instead of running from long to short within each group; a partial batch stays last. Every
    index of ``inner`` is yielded once, and the order is a function of ``inner``'s order, ``seed`` and
    ``epoch``.
    """

    def __init__(
        self,
        inner: Sampler[int],
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        epoch: int,
        megabatch: int = MEGABATCH,
    ) -> None:
        self.inner, self.lengths, self.batch_size = inner, lengths, batch_size
        self.seed, self.epoch, self.megabatch = seed, epoch, megabatch

    def __iter__(self) -> Iterator[int]:
        order = list(self.inner)
        group = self.megabatch * self.batch_size
        grouped: list[int] = []
        for start in range(0, len(order), group):  # sorted is stable: ties keep the shuffle
            grouped += sorted(order[start : start + group], key=lambda i: -self.lengths[i])
        batches = [
            grouped[i : i + self.batch_size] for i in range(0, len(grouped), self.batch_size)
        ]
        partial = batches.pop() if batches and len(batches[-1]) < self.batch_size else None
        random.Random(f"group_by_length/{self.seed}/{self.epoch}").shuffle(batches)
        if partial:
            batches.append(partial)
        return iter([i for batch in batches for i in batch])

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]


def item_lengths(data: Dataset | DataLoader) -> Sequence[int]:
    """Per-item lengths for ``train.group_by_length``: the dataset's ``lengths()`` (token counts for
    distill's text datasets), checked to give one per item."""
    if isinstance(data, DataLoader) or not isinstance(data, SizedByLength):
        raise DistillError(
            f"train.group_by_length needs a dataset that reports its items' lengths (a lengths() "
            f"method, as distill's text datasets have), got {type(data).__name__}; set "
            "train.group_by_length: false or give the dataset a lengths() method"
        )
    values = data.lengths()
    if len(values) != len(data):  # type: ignore[arg-type]
        raise DistillError(
            f"{type(data).__name__}.lengths() gave {len(values)} lengths for "
            f"{len(data)} items; it must return one length per item"  # type: ignore[arg-type]
        )
    return values


def epoch_loader(
    data: Dataset | DataLoader,
    local_batch: int,
    dist: DistInfo,
    seed: int,
    epoch: int,
    skip_batches: int = 0,
    lengths: Sequence[int] | None = None,
) -> Iterable[Any]:
    """This rank's batches of ``epoch``, shuffled from ``(seed, epoch)``, the first ``skip_batches`` left
    out; with ``lengths`` (one per item), batches of similar length (:class:`LengthGroupedSampler`). A
    ready DataLoader is used as given (its order is then the caller's); a ``DistributedSampler`` in it is
    set to ``epoch``, and under ``torchrun`` it must have one (:func:`user_loader`)."""
    if isinstance(data, DataLoader):
        return user_loader(data, dist, epoch)
    shuffled = DistributedSampler(
        data, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed, drop_last=False
    )
    shuffled.set_epoch(epoch)
    sampler: Sampler[int] = shuffled
    if lengths is not None:
        sampler = LengthGroupedSampler(shuffled, lengths, local_batch, seed, epoch)
    if isinstance(data, PlansItsBatches):  # batches that are not the order cut in pieces
        return data.epoch_batches(local_batch, sampler, skip_batches)
    if skip_batches:
        sampler = SkipSampler(sampler, skip_batches * local_batch)
    return make_loader(data, local_batch, sampler)


def user_loader(loader: DataLoader, dist: DistInfo, epoch: int) -> DataLoader:
    """The caller's ``loader`` for ``epoch``: its ``DistributedSampler`` (if any) gets ``set_epoch(epoch)``
    so each epoch is shuffled anew; under ``torchrun`` a loader without one, or with one for another
    number of processes, is refused, since every rank would train on the same items."""
    sampler = loader.sampler
    if not isinstance(sampler, DistributedSampler):
        sampler = getattr(loader.batch_sampler, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        if dist.enabled and sampler.num_replicas != dist.world_size:
            raise DistillError(
                f"the training DataLoader's DistributedSampler splits the data over {sampler.num_replicas} "
                f"processes but torchrun started {dist.world_size}; build it with "
                "DistributedSampler(dataset) inside the run, or pass the Dataset (the trainer shards it)"
            )
        sampler.set_epoch(epoch)
    elif dist.enabled:
        raise DistillError(
            f"the training DataLoader has a {type(loader.sampler).__name__}, so under torchrun each of the "
            f"{dist.world_size} processes would train on all of it; pass the Dataset instead (the trainer "
            "shards and shuffles it) or build the loader with sampler=DistributedSampler(dataset)"
        )
    return loader
