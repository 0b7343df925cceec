"""A recipe's data: the training and evaluation splits (subsets, a carved validation set, a transfer
set, loader options), checked to agree, the ``(num_classes, in_channels)`` the models are built for, and
text data given the student's tokenizer."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from distill.config.schema import (
    Recipe,
    TransferSpec,
)
from distill.data import build_dataset
from distill.data.base import (
    ImageDataset,
    LabelledDataset,
    LoaderOptions,
    TextData,
    model_inputs,
)
from distill.data.base import eval_loader as eval_loader  # re-exported for the assembly path
from distill.data.tensor import TensorDataset
from distill.data.transfer import TransferSet, make_transfer_set
from distill.errors import ConfigError, DistillError
from distill.models.hf import same_vocabulary, tokenizer_of

VALIDATION_SEED = 0  # data.validation carves the same samples in every run (every tuning trial)


def build_data(recipe: Recipe) -> tuple[Any, Any]:
    """The training and evaluation splits: the test split, or with ``data.validation`` samples carved
    from the training set (the test split is then never read)."""
    spec = recipe.data
    train = build_dataset(spec.name, "train", spec.root, **spec.options)
    if spec.validation:
        train, test = carve_validation(train, spec.validation, spec.name)
    else:
        test = build_dataset(spec.name, "test", spec.root, **spec.options)
        check_splits_agree(train, test, spec.name)
    if spec.train_subset:
        train = train.subset(min(spec.train_subset, len(train)), seed=recipe.train.seed)
    if spec.test_subset:
        test = test.subset(min(spec.test_subset, len(test)), seed=0)
    if spec.transfer is not None:
        train = build_transfer(spec.transfer, train, recipe.train.seed)
    options = LoaderOptions(
        spec.num_workers, spec.pin_memory, spec.persistent_workers, spec.prefetch_factor
    )
    for split in (train, test):
        with contextlib.suppress(AttributeError):  # read by make_loader (data/base.py)
            split.loader_options = options
    return train, test


def carve_validation(train: Any, n: int, name: str) -> tuple[Any, Any]:
    """``(rest, validation)``: ``n`` class-balanced samples of ``train`` (seeded with
    ``VALIDATION_SEED``) and the others."""
    if not isinstance(train, TensorDataset):
        raise ConfigError(
            f"data.validation needs an in-memory dataset to carve from, but {name!r} gives a "
            f"{type(train).__name__}; evaluate on its test split (drop data.validation)"
        )
    if not 0 < n < len(train):
        raise ConfigError(
            f"data.validation={n} leaves no training samples in {name!r} ({len(train)}); use fewer, "
            f"e.g. {max(1, len(train) // 6)}"
        )
    keep = train.subset_indices(n, VALIDATION_SEED)
    rest = torch.ones(len(train), dtype=torch.bool)
    rest[keep] = False
    return train.take(rest.nonzero().flatten()), train.take(keep)


def build_transfer(spec: TransferSpec, train: Any, train_seed: int) -> TransferSet:
    """``data.transfer``: the training set split into labelled rows and a transfer set (plus an extra
    dataset's inputs), batched at ``labelled_fraction``."""
    seed = train_seed if spec.seed is None else spec.seed
    extra = None
    if spec.dataset is not None:
        extra = build_dataset(spec.dataset.name, "train", spec.dataset.root, **spec.dataset.options)
        if spec.dataset.subset:
            extra = extra.subset(min(spec.dataset.subset, len(extra)), seed=seed)
    return make_transfer_set(train, spec.labels_per_class, extra, spec.labelled_fraction, seed=seed)


def check_splits_agree(train: Any, test: Any, name: str) -> None:
    """The test split must have the training split's class count, channels and image size."""
    checks = []
    if isinstance(train, LabelledDataset) and isinstance(test, LabelledDataset):
        fix = "relabel them or store the same num_classes/classes metadata in both"
        checks.append(("num_classes", train.num_classes, test.num_classes, fix))
    if isinstance(train, ImageDataset) and isinstance(test, ImageDataset):
        fix = "convert both to the same channel count (grayscale or RGB)"
        checks.append(("in_channels", train.in_channels, test.in_channels, fix))
        checks.append(
            ("image_size", train.image_size, test.image_size, "resize both to the same size")
        )
    for attr, a, b, fix in checks:
        if a is not None and b is not None and a != b:
            show = (lambda v: "x".join(map(str, v))) if attr == "image_size" else str
            raise DistillError(
                f"dataset {name!r}: the train split has {attr} {show(a)} but the test split has "
                f"{show(b)}; both splits need the same {attr}: {fix}"
            )


def data_shape(recipe: Recipe, train: Any) -> tuple[int, int]:
    """``(num_classes, in_channels)`` the models are built for: the training split's (see
    :func:`~distill.data.base.model_inputs`)."""
    num_classes, in_channels = model_inputs(train)
    if num_classes is None:
        raise ConfigError(f"dataset {recipe.data.name!r} does not say how many classes it has")
    return num_classes, in_channels


def prepare_text_data(
    recipe: Recipe, data: tuple[Any, Any], student: nn.Module, teacher: nn.Module | None
) -> None:
    """Text data takes the student's tokenizer; the teacher must read the same token ids."""
    if not all(isinstance(d, TextData) for d in data):
        return
    tokenizer = tokenizer_of(student) or (tokenizer_of(teacher) if teacher is not None else None)
    if tokenizer is None:
        if any(d.tokenizer is None for d in data):
            raise ConfigError(
                f"dataset {recipe.data.name!r} holds text but student {recipe.student.name!r} has no "
                "tokenizer; use a Hugging Face student (hf:FOLDER or from_teacher)"
            )
        return
    if teacher is not None and not same_vocabulary(student, teacher):
        who = "distillation terms need" if recipe.distill.terms else "the teacher needs"
        raise ConfigError(
            f"teacher {recipe.teacher.name!r} and student {recipe.student.name!r} use different "
            f"tokenizers or vocabularies, but {who} the same token ids; use a student built from the "
            "teacher (from_teacher) or one with the teacher's tokenizer"
        )
    for d in data:
        d.set_tokenizer(tokenizer)
