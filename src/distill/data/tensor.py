"""In-memory image classification dataset with fast batched fetching.

Every batch is a dict ``{"image": float32 [B,C,H,W], "label": int64 [B], "index": int64 [B]}``;
``index`` is the position in the dataset (contrastive KD methods keep per-sample memory banks).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from distill.errors import DistillError

SPLITS = ("train", "test")


def check_split(split: str) -> str:
    """Return ``split`` if it is "train" or "test", else raise a DistillError."""
    if split not in SPLITS:
        raise DistillError(f"unknown split {split!r}; use one of {', '.join(map(repr, SPLITS))}")
    return split


class BatchedItems(Sequence[dict[str, Tensor]]):
    """What ``TensorDataset.__getitems__`` returns: one pre-stacked batch.

    It is also a sequence of per-sample dicts (built lazily), so torch's ``default_collate``
    still works; ``identity_collate`` skips that and returns ``.batch`` as is.
    """

    def __init__(self, batch: dict[str, Tensor]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["index"])

    def __getitem__(self, i: int) -> dict[str, Tensor]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return {key: value[i] for key, value in self.batch.items()}

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return (self[i] for i in range(len(self)))


class InMemoryLoader(DataLoader):
    """The single-process DataLoader of a :class:`TensorDataset`: the same batches, in the same order,
    as torch's own iterator gives (one ``__getitems__`` gather per batch of the batch sampler's
    indices, then ``collate_fn``), and the same one draw from ``generator`` (the global generator when
    None) each time a pass starts, so the random state after ``iter()`` is unchanged; without that
    iterator's per-batch bookkeeping (profiler range, fetcher, pinning checks), which costs as much as
    the gather itself for a small batch."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        if self.num_workers or not self._auto_collation:
            return super().__iter__()
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # torch's base seed
        return self._batches(iter(self._index_sampler))

    def _batches(self, order: Iterator[list[int]]) -> Iterator[Any]:
        fetch, collate = self.dataset.__getitems__, self.collate_fn  # type: ignore[attr-defined]
        for indices in order:
            yield collate(fetch(indices))


def identity_collate(batch: Any) -> dict[str, Tensor]:
    """DataLoader ``collate_fn`` for TensorDataset: the batch is already stacked.

    Also accepts a list of per-sample dicts (e.g. from ``ConcatDataset``) and stacks it.
    """
    if isinstance(batch, BatchedItems):
        return batch.batch
    if isinstance(batch, Mapping):
        return dict(batch)
    return default_collate(list(batch))


collate_dicts = identity_collate


def _as_images(images: Tensor, name: str) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise DistillError(
            f"images of dataset {name!r} must be a 4-D tensor [N,C,H,W], got {shape}; "
            "add a channel dimension or reshape"
        )
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    if not images.is_floating_point():
        raise DistillError(
            f"images of dataset {name!r} must be float (in [0, 1]) or uint8, got dtype {images.dtype}; "
            "convert them"
        )
    return images.to(torch.float32)


def _as_labels(labels: Tensor, n: int, name: str) -> Tensor:
    if not isinstance(labels, Tensor) or labels.ndim != 1 or len(labels) != n:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise DistillError(
            f"labels of dataset {name!r} must be a 1-D tensor of length {n} (one per image), got {shape}; "
            "fix the label array"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DistillError(
            f"labels of dataset {name!r} must be integer class ids, got dtype {labels.dtype}; "
            "convert them with .long()"
        )
    return labels.to(torch.int64)


class TensorDataset(Dataset):
    """Images float32 [N,C,H,W] in [0, 1] and labels int64 [N] held in memory.

    uint8 images are scaled by 1/255. ``num_classes`` defaults to ``max(label) + 1``;
    ``classes`` (names) defaults to ``["0", "1", ...]``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        num_classes: int | None = None,
        classes: Sequence[str] | None = None,
        name: str = "tensors",
    ) -> None:
        if isinstance(images, Tensor) and images.ndim >= 1 and images.shape[0] == 0:
            raise DistillError(
                f"dataset {name!r} is empty (0 images); point it at a folder/file with data"
            )
        self.images = _as_images(images, name)
        self.labels = _as_labels(labels, len(self.images), name)
        self.name = name
        if classes is not None and num_classes is None:
            num_classes = len(classes)
        if num_classes is None:
            num_classes = int(self.labels.max()) + 1
        self.num_classes = int(num_classes)
        self._check_labels()
        if classes is not None and len(classes) != self.num_classes:
            raise DistillError(
                f"got {len(classes)} class names for {self.num_classes} classes; pass one name per class"
            )
        self.classes = (
            list(classes) if classes is not None else [str(i) for i in range(self.num_classes)]
        )

    def _check_labels(self) -> None:
        low, high = int(self.labels.min()), int(self.labels.max())
        bad = low if low < 0 else high
        if low < 0 or high >= self.num_classes:
            raise DistillError(
                f"label {bad} in dataset {self.name!r} is out of range for {self.num_classes} classes; "
                f"labels must be in [0, {self.num_classes}) - fix the labels or pass num_classes"
            )

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        i = int(i)
        i = i + len(self) if i < 0 else i
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for dataset of length {len(self)}")
        return {"image": self.images[i], "label": self.labels[i], "index": torch.tensor(i)}

    def __getitems__(self, indices: Sequence[int]) -> BatchedItems:
        """Fetch a whole batch with one gather per tensor (used by torch's DataLoader)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        # a sampler's list holds indices >= 0: checked in Python, cheaper than two tensor ops
        if not isinstance(indices, list) or (indices and min(indices) < 0):
            idx = torch.where(idx < 0, idx + len(self), idx)
        dev = self.images.device
        on_dev = idx if idx.device == dev else idx.to(dev)
        batch = {"image": self.images[on_dev], "label": self.labels[on_dev], "index": idx}
        return BatchedItems(batch)

    def loader(
        self,
        batch_size: int,
        sampler: Sampler[int] | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        """A single-process DataLoader yielding dict batches (see module docstring)."""
        if batch_size <= 0:
            raise DistillError(f"batch_size must be positive, got {batch_size}; use e.g. 128")
        if sampler is not None and shuffle:
            raise DistillError("shuffle=True conflicts with an explicit sampler; drop one of them")
        return InMemoryLoader(
            self,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=shuffle,
            drop_last=drop_last,
            generator=generator,
            collate_fn=identity_collate,
            num_workers=0,
        )

    def subset(self, n: int, seed: int = 0) -> TensorDataset:
        """A seeded, class-balanced subset of ``n`` items (classes interleaved round-robin)."""
        return self._replace(self.subset_indices(n, seed))

    def subset_indices(self, n: int, seed: int = 0) -> Tensor:
        """The sorted positions :meth:`subset` keeps: with ``n = k * num_classes`` and at least ``k``
        items in every class, exactly ``k`` of each class."""
        if not 0 < n <= len(self):
            raise DistillError(
                f"subset size {n} is out of range for dataset {self.name!r} with {len(self)} items; use 1..{len(self)}"
            )
        gen = torch.Generator().manual_seed(seed)
        labels = self.labels.cpu()
        perm = torch.randperm(len(self), generator=gen)
        lab = labels[perm]
        counts = torch.bincount(lab, minlength=self.num_classes)
        starts = torch.cumsum(counts, 0) - counts
        order = torch.argsort(lab, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(self)) - starts[lab[order]]  # position within its class
        return perm[torch.argsort(rank, stable=True)[:n]].sort().values

    def take(self, idx: Tensor) -> TensorDataset:
        """The items at positions ``idx`` (int64), in that order."""
        return self._replace(idx)

    def _replace(self, idx: Tensor) -> TensorDataset:
        dev = self.images.device
        return TensorDataset(
            self.images[idx.to(dev)],
            self.labels[idx.to(dev)],
            self.num_classes,
            self.classes,
            self.name,
        )

    def to(self, device: torch.device | str) -> TensorDataset:
        """A copy with images and labels on ``device`` (batches are then gathered there)."""
        out = TensorDataset.__new__(TensorDataset)
        out.__dict__.update(self.__dict__)
        out.images, out.labels = self.images.to(device), self.labels.to(device)
        return out

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return f"TensorDataset({self.name!r}, n={len(self)}, shape=[{c},{h},{w}], classes={self.num_classes})"
