"""What distill reads of a dataset, written down as protocols, and the rules that read them.

Any ``torch.utils.data.Dataset`` of batches the task can ``split`` trains; these protocols name what
distill uses when a dataset has more, one protocol per rule, checked with ``isinstance`` (so a plugin's
dataset needs only the part a rule reads):

* :class:`BatchingDataset`: batches itself (``loader``): in-memory gathers, tokenising collates,
  Ultralytics' collate. :func:`make_loader` and :func:`eval_loader` use it.
* :class:`PlansItsBatches`: makes its own training batches from the shuffled order (transfer sets).
* :class:`SizedByLength`: reports per-item lengths (``lengths()``) for ``train.group_by_length``.
* :class:`LabelledDataset`: says how many classes it has (``num_classes``), which sizes the models'
  heads and the class-count checks.
* :class:`ImageDataset`: images ``(B, in_channels, *image_size)``; models are built for its channels
  (3 otherwise), and the two splits must agree.
* :class:`TextData`: the text extension: raw ``texts`` tokenised by the student's tokenizer, which the
  recipe build hands over with ``set_tokenizer`` (``tokenizer`` is None until then).
* :class:`DistillDataset`: what distill's own datasets (tensors, Fashion-MNIST, folders, text,
  detection) all provide: the above but lengths/text, plus ``name``, ``len`` and a seeded ``subset``
  (``data.train_subset``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

Order = Sampler[int] | Sequence[int] | None


@runtime_checkable
class BatchingDataset(Protocol):
    """A dataset that makes its own batches, in ``sampler``'s order (its index order when None)."""

    def loader(self, batch_size: int, sampler: Order = None) -> Iterable[Any]: ...


@runtime_checkable
class PlansItsBatches(Protocol):
    """A training set whose batches are not its shuffled order cut in pieces (a transfer set mixes two
    sets at a ratio, :mod:`distill.data.transfer`): it makes an epoch's batches from the trainer's
    sampler and leaves out the first ``skip_batches`` itself (a resumed epoch). The batch count is
    ``len()`` of what it returns."""

    def epoch_batches(self, batch_size: int, sampler: Order, skip_batches: int = 0) -> Any: ...


@runtime_checkable
class SizedByLength(Protocol):
    """A dataset that reports one length per item (token counts for text)."""

    def lengths(self) -> Sequence[int]: ...


@runtime_checkable
class LabelledDataset(Protocol):
    """A dataset of ``num_classes`` classes (labels ``0 .. num_classes - 1``)."""

    num_classes: int


@runtime_checkable
class ImageDataset(Protocol):
    """Images ``(B, in_channels, H, W)``, ``image_size = (H, W)``."""

    in_channels: int
    image_size: tuple[int, int]


@runtime_checkable
class TextData(Protocol):
    """Raw texts tokenised with the student's tokenizer (``set_tokenizer``, before the first batch)."""

    texts: list[str]
    tokenizer: Any
    max_length: int

    def set_tokenizer(self, tokenizer: Any, max_length: int | None = None) -> Any: ...


@runtime_checkable
class DistillDataset(BatchingDataset, LabelledDataset, Protocol):
    """distill's own datasets: named, sized, batching, labelled, cut to a seeded subset."""

    name: str

    def __len__(self) -> int: ...

    def subset(self, n: int, seed: int = 0) -> DistillDataset: ...


def model_inputs(data: Any) -> tuple[int | None, int]:
    """``(num_classes, in_channels)`` a model for ``data`` is built with: its class count (None when it
    does not say) and its channels (3 unless it is an :class:`ImageDataset` that says otherwise)."""
    num_classes = data.num_classes if isinstance(data, LabelledDataset) else None
    return num_classes, data.in_channels if isinstance(data, ImageDataset) else 3


@dataclass(frozen=True)
class LoaderOptions:
    """How a DataLoader over a dataset that reads its items one by one (files decoded per item) loads
    them: ``num_workers`` worker processes (0: in the main process), each holding ``prefetch_factor``
    batches ahead; ``pin_memory`` (None: when CUDA is available) for faster copies to the GPU;
    ``persistent_workers`` keeps the workers between passes over one loader. The order of the items
    is the sampler's, whatever the number of workers (each batch is returned in sampler order).

    The recipe's ``data`` section sets them (``data.num_workers`` ...) on both splits as
    ``dataset.loader_options``; in-memory datasets that batch by slicing ignore them."""

    num_workers: int = 0
    pin_memory: bool | None = None
    persistent_workers: bool = False
    prefetch_factor: int | None = None

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``torch.utils.data.DataLoader``."""
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        out: dict[str, Any] = {"num_workers": self.num_workers, "pin_memory": pin}
        if self.num_workers > 0:  # DataLoader refuses these without workers
            out["persistent_workers"] = self.persistent_workers
            if self.prefetch_factor is not None:
                out["prefetch_factor"] = self.prefetch_factor
        return out


def loader_options(dataset: Any) -> LoaderOptions:
    """The dataset's ``loader_options`` (set from the recipe), else the defaults (no workers)."""
    options = getattr(dataset, "loader_options", None)
    return options if isinstance(options, LoaderOptions) else LoaderOptions()


class _SwappedSampler(Sampler[int]):
    """The order of a loader kept between passes: the current pass's sampler (index order when None)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.current: Order = None

    def __iter__(self) -> Iterator[int]:
        return iter(self.current if self.current is not None else range(len(self.dataset)))

    def __len__(self) -> int:
        return len(self.current if self.current is not None else self.dataset)  # type: ignore[arg-type]


def worker_loader(
    dataset: Dataset, batch_size: int, sampler: Order, kept: dict[Any, Any] | None = None
) -> DataLoader:
    """A DataLoader over ``dataset`` in ``sampler``'s order with its :func:`loader_options`. With
    ``persistent_workers`` and a ``kept`` dict (the dataset's own, left out when it is pickled), one
    loader per batch size is kept there and each call only swaps its order, so its workers live from
    one epoch (one call) to the next instead of being started anew. A kept loader serves one pass at
    a time: a second call of the same batch size restarts it in the new order."""
    options = loader_options(dataset)
    if kept is None or not (options.persistent_workers and options.num_workers > 0):
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, shuffle=False, **options.kwargs()
        )
    key = (batch_size, options)
    if key not in kept:
        order = _SwappedSampler(dataset)
        kept[key] = (order, DataLoader(dataset, batch_size, sampler=order, **options.kwargs()))
    order, loader = kept[key]
    order.current = sampler
    return loader


def make_loader(dataset: Dataset, batch_size: int, sampler: Order) -> Iterable[Any]:
    """A dataset that batches itself does (:class:`BatchingDataset`); others get a DataLoader with
    the dataset's :func:`loader_options` (workers, pinned memory; :func:`worker_loader`)."""
    if isinstance(dataset, BatchingDataset):
        return dataset.loader(batch_size, sampler=sampler)
    return worker_loader(dataset, batch_size, sampler)


def eval_loader(data: Any, batch_size: int) -> Iterable[Any]:
    """Batches of ``data`` in order, for evaluation: a ready DataLoader as given, else
    :func:`make_loader` (the dataset's own loader, else a DataLoader). Every evaluation and example
    batch distill takes from a dataset comes from here."""
    return data if isinstance(data, DataLoader) else make_loader(data, batch_size, None)
