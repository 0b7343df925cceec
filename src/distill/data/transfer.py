"""Transfer sets (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", section 2): the
distillation terms read a larger set whose labels are not used, the task loss only the labelled rows.

:class:`TransferSet` joins a labelled dataset and a transfer dataset into one index space (labelled
rows first, then transfer rows). Every batch is a dict ``{"image", "label", "index"}`` like
:class:`~distill.data.tensor.TensorDataset`'s, where a transfer row's label is :data:`UNLABELLED` (-1)
and its index is ``len(labelled) + i``; the class-logit tasks leave those rows out of the task loss and
batch accuracy, and every distillation term sees all rows.

Training batches (:meth:`TransferSet.epoch_batches`) mix the two at a stated ratio: with
``labelled_fraction`` r, each batch of ``B`` holds ``round(r * B)`` labelled rows (at least one) and the
rest transfer rows, both taken in the order of the trainer's shuffled sampler and cycled when one side
runs out (the small labelled set repeats within an epoch). An epoch is one pass over the transfer rows.
The batches are a function of the sampler's order, so a resumed run sees the ones an uninterrupted run
saw. Without a ratio (None) batches are the sampler's order cut in pieces (the sets' own proportion).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from distill.data.base import ImageDataset, LabelledDataset, Order
from distill.data.tensor import TensorDataset, collate_dicts
from distill.errors import DistillError

UNLABELLED = -1  # the label of a transfer row; tasks/classification.py reads the same value


def labels_per_class_split(data: TensorDataset, per_class: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(labelled, rest)`` sorted index tensors of ``data``: ``per_class`` samples of each class, the
    ones ``data.subset(per_class * num_classes, seed)`` keeps (so a scratch run with
    ``data.train_subset`` and the same seed trains on the same labels), and all the others."""
    counts = torch.bincount(data.labels.cpu(), minlength=data.num_classes)
    short = int(counts.argmin())
    if int(counts[short]) < per_class:
        raise DistillError(
            f"data.transfer.labels_per_class={per_class} but class {short} has only "
            f"{int(counts[short])} training samples; use at most {int(counts[short])}"
        )
    keep_idx = data.subset_indices(per_class * data.num_classes, seed)
    keep = torch.zeros(len(data), dtype=torch.bool)
    keep[keep_idx] = True
    return keep_idx, (~keep).nonzero().flatten()


def make_transfer_set(
    train: Dataset,
    labels_per_class: int | None,
    extra: Dataset | None,
    labelled_fraction: float | None,
    seed: int = 0,
) -> TransferSet:
    """The training set of a recipe with ``data.transfer``: ``labels_per_class`` samples of each class of
    ``train`` keep their labels and the others join the transfer set (None: all of ``train`` stays
    labelled), followed by ``extra``'s samples (labels dropped)."""
    labelled, parts = train, []
    if labels_per_class is not None:
        if not isinstance(train, TensorDataset):
            raise DistillError(
                f"data.transfer.labels_per_class needs an in-memory image dataset, got "
                f"{type(train).__name__}; give the unlabelled data as data.transfer.dataset instead"
            )
        keep, rest = labels_per_class_split(train, labels_per_class, seed)
        labelled = train.take(keep)
        if len(rest):
            parts.append(train.take(rest))
    if extra is not None:
        _check_same_inputs(labelled, extra)
        parts.append(extra)
    if not parts:
        raise DistillError(
            f"data.transfer.labels_per_class={labels_per_class} keeps every training sample labelled, "
            "so there is no transfer set; use fewer labels per class or add data.transfer.dataset"
        )
    return TransferSet(
        labelled, _joined(parts), labelled_fraction, name=getattr(train, "name", "train")
    )


def _check_same_inputs(labelled: Dataset, extra: Dataset) -> None:
    """The transfer dataset's inputs have the labelled data's shape and dtype: both go into the same
    batches (a mismatch failed mid-epoch with torch.stack's error)."""
    if not len(extra) or not len(labelled):
        return
    ours, theirs = labelled[0], extra[0]
    for key, value in ours.items():
        other = theirs.get(key) if isinstance(theirs, dict) else None
        if key in ("label", "labels", "index") or not isinstance(value, Tensor):
            continue
        if (
            not isinstance(other, Tensor)
            or other.shape != value.shape
            or other.dtype != value.dtype
        ):
            got = "none" if not isinstance(other, Tensor) else f"{list(other.shape)} {other.dtype}"
            raise DistillError(
                f"data.transfer.dataset's {key!r} inputs are {got}, the training data's "
                f"{list(value.shape)} {value.dtype}; give a transfer set of the same image size and "
                "channels (dataset options such as image_size, grayscale)"
            )


def _joined(parts: list[Dataset]) -> Dataset:
    """One dataset of ``parts``' rows: in-memory images of one shape are joined into one tensor (one
    gather a batch; labels are never read, so they are zeroed), others are concatenated."""
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, TensorDataset) for p in parts):
        shapes = {tuple(p.images.shape[1:]) for p in parts}  # type: ignore[attr-defined]
        if len(shapes) == 1:
            images = torch.cat([p.images.cpu() for p in parts])  # type: ignore[attr-defined]
            return TensorDataset(images, torch.zeros(len(images), dtype=torch.long), num_classes=1)
    return ConcatDataset(parts)


def _rows(data: Dataset, indices: Sequence[int]) -> dict[str, Tensor]:
    """Rows ``indices`` of ``data`` as one dict batch (one gather for in-memory tensors)."""
    if not indices:
        raise DistillError(
            "internal: an empty row request"
        )  # pragma: no cover - guarded by callers
    items = data.__getitems__(list(indices)) if hasattr(data, "__getitems__") else None
    if items is None:
        items = [data[i] for i in indices]
    return collate_dicts(items)


class TransferSet(Dataset):
    """``labelled`` rows (labels used by the task loss) and ``transfer`` rows (labels dropped), batched at
    ``labelled_fraction`` labelled rows per batch (None: as the shuffled order falls)."""

    def __init__(
        self,
        labelled: Dataset,
        transfer: Dataset,
        labelled_fraction: float | None = None,
        name: str = "transfer",
    ) -> None:
        if len(labelled) == 0 or len(transfer) == 0:  # type: ignore[arg-type]
            which = "labelled" if len(labelled) == 0 else "transfer"  # type: ignore[arg-type]
            raise DistillError(f"data.transfer: the {which} set is empty; give it samples")
        self.labelled, self.transfer = labelled, transfer
        self.labelled_fraction = labelled_fraction
        self.name = name
        self.num_classes = labelled.num_classes if isinstance(labelled, LabelledDataset) else None
        if isinstance(labelled, ImageDataset):
            self.in_channels, self.image_size = labelled.in_channels, labelled.image_size
        if isinstance(transfer, ImageDataset) and isinstance(labelled, ImageDataset):
            if (transfer.in_channels, transfer.image_size) != (self.in_channels, self.image_size):
                raise DistillError(
                    f"data.transfer: its images are {transfer.in_channels}x"
                    f"{'x'.join(map(str, transfer.image_size))} but the labelled ones "
                    f"{self.in_channels}x{'x'.join(map(str, self.image_size))}; use a transfer set "
                    "of the same channels and size"
                )

    @property
    def num_labelled(self) -> int:
        return len(self.labelled)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.num_labelled + len(self.transfer)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {key: value[0] for key, value in self.batch([int(i)]).items()}

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """Rows ``indices`` of the joined index space, in that order; transfer rows labelled -1."""
        n = self.num_labelled
        pos_l = [p for p, i in enumerate(indices) if i < n]
        pos_t = [p for p, i in enumerate(indices) if i >= n]
        parts, where = [], []
        if pos_l:
            rows = _rows(self.labelled, [indices[p] for p in pos_l])
            parts.append((rows["image"], rows["label"]))
            where += pos_l
        if pos_t:
            rows = _rows(self.transfer, [indices[p] - n for p in pos_t])
            parts.append((rows["image"], torch.full_like(rows["label"], UNLABELLED)))
            where += pos_t
        images, labels = (torch.cat(t) for t in zip(*parts, strict=True))
        back = torch.empty(len(where), dtype=torch.long)
        back[torch.as_tensor(where)] = torch.arange(len(where))
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return {"image": images[back], "label": labels[back], "index": index}

    def labels_seen(self, steps: int, batch_size: int, batches_per_step: int = 1) -> dict[str, Any]:
        """What the run's summary says about labels: the distinct labelled samples (all the labels
        the student saw), the unlabelled ones and, with a ratio, the labelled rows per optimizer step
        and in all (``batch_size``: one micro-batch of one process; ``batches_per_step``: micro-batches
        times processes)."""
        out: dict[str, Any] = {
            "labelled_samples": self.num_labelled,
            "unlabelled_samples": len(self.transfer),  # type: ignore[arg-type]
        }
        if self.labelled_fraction is not None:
            per_batch = self.labelled_rows(batch_size) * batches_per_step
            out["labelled_per_step"] = per_batch
            out["labelled_rows_seen"] = per_batch * steps
        return out

    def labelled_rows(self, batch_size: int) -> int:
        """Labelled rows in a training batch of ``batch_size``: ``round(r * B)``, at least 1, at most B - 1."""
        assert self.labelled_fraction is not None
        return min(max(1, round(self.labelled_fraction * batch_size)), max(batch_size - 1, 1))

    def plan(self, order: Sequence[int], batch_size: int) -> list[list[int]]:
        """The training batches (joined indices) for one rank's shuffled ``order``."""
        if self.labelled_fraction is None:
            return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
        n = self.num_labelled
        lab = [i for i in order if i < n] or list(range(n))
        tra = [i for i in order if i >= n] or list(range(n, len(self)))
        k = self.labelled_rows(batch_size)
        # the count follows from len(order) alone, so every rank under torchrun runs as many steps
        share = len(self.transfer) / len(self)  # type: ignore[arg-type]
        count = max(1, math.ceil(len(order) * share / (batch_size - k)))
        return [
            [lab[(b * k + j) % len(lab)] for j in range(k)]
            + [tra[(b * (batch_size - k) + j) % len(tra)] for j in range(batch_size - k)]
            for b in range(count)
        ]

    def epoch_batches(self, batch_size: int, sampler: Order, skip_batches: int = 0) -> _Batches:
        """Training batches in ``sampler``'s order at the set's ratio, the first ``skip_batches`` left out."""
        order = list(sampler) if sampler is not None else list(range(len(self)))
        return _Batches(self, self.plan(order, batch_size)[skip_batches:])

    def loader(self, batch_size: int, sampler: Order = None) -> _Batches:
        """Batches in ``sampler``'s order (index order when None), cut in pieces, without a ratio: for
        evaluation passes, the teacher cache and the example batch."""
        order = list(sampler) if sampler is not None else list(range(len(self)))
        return _Batches(self, [order[i : i + batch_size] for i in range(0, len(order), batch_size)])

    def subset(self, n: int, seed: int = 0) -> TransferSet:
        raise DistillError(
            "data.train_subset with data.transfer: cut the labelled set with data.train_subset before "
            "the transfer split is made, not the joined set"
        )

    def __repr__(self) -> str:
        return (
            f"TransferSet({self.name!r}, labelled={self.num_labelled}, "
            f"transfer={len(self.transfer)}, labelled_fraction={self.labelled_fraction})"  # type: ignore[arg-type]
        )


class _Batches:
    """An iterable of planned batches with a length (the trainer counts steps per epoch with ``len``)."""

    def __init__(self, data: TransferSet, plan: list[list[int]]) -> None:
        self.data, self.plan = data, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return (self.data.batch(indices) for indices in self.plan)
