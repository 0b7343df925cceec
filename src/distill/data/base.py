"""What distill reads of a dataset, written down as protocols, and the one loader rule.

Any ``torch.utils.data.Dataset`` of batches the task can ``split`` trains; these protocols name what
distill uses when a dataset has more, one protocol per rule, checked with ``isinstance``:

* :class:`BatchingDataset`: batches itself (``loader``): in-memory gathers, tokenising collates,
  Ultralytics' collate. :func:`make_loader` uses it wherever distill makes a loader.
* :class:`SizedByLength`: reports per-item lengths (``lengths()``) for ``train.group_by_length``.
* :class:`DistillDataset`: distill's own datasets: batching, ``name``, ``num_classes``, ``subset``,
  which the recipe build, the checks and ``compare`` read. :class:`ImageDataset` adds ``in_channels`` and
  ``image_size`` (H, W), from which models are built.
* :class:`TextData`: the text extension: raw ``texts`` tokenised by the student's tokenizer, which the
  recipe build hands over with ``set_tokenizer`` (``tokenizer`` is None until then).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from torch.utils.data import DataLoader, Dataset, Sampler

Order = Sampler[int] | Sequence[int] | None


@runtime_checkable
class BatchingDataset(Protocol):
    """A dataset that makes its own batches, in ``sampler``'s order (its index order when None)."""

    def loader(self, batch_size: int, sampler: Order = None) -> Iterable[Any]: ...


@runtime_checkable
class SizedByLength(Protocol):
    """A dataset that reports one length per item (token counts for text)."""

    def lengths(self) -> Sequence[int]: ...


@runtime_checkable
class DistillDataset(BatchingDataset, Protocol):
    """distill's datasets: sized, batching, cut to a seeded subset, with a class count."""

    name: str
    num_classes: int

    def __len__(self) -> int: ...

    def subset(self, n: int, seed: int = 0) -> DistillDataset: ...


@runtime_checkable
class ImageDataset(DistillDataset, Protocol):
    """Images ``(B, in_channels, *image_size)``."""

    in_channels: int
    image_size: tuple[int, int]


@runtime_checkable
class TextData(DistillDataset, SizedByLength, Protocol):
    """Raw texts tokenised with the student's tokenizer (``set_tokenizer``, before the first batch)."""

    texts: list[str]
    tokenizer: Any
    max_length: int

    def set_tokenizer(self, tokenizer: Any, max_length: int | None = None) -> TextData: ...


def make_loader(dataset: Dataset, batch_size: int, sampler: Order) -> Iterable[Any]:
    """A dataset that batches itself does (:class:`BatchingDataset`); others get a DataLoader."""
    if isinstance(dataset, BatchingDataset):
        return dataset.loader(batch_size, sampler=sampler)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False)
