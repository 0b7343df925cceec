"""Datasets, batched loading and batch augmentation.

Every dataset factory has the signature ``(split="train", root=None, **options) -> Dataset``
and its datasets expose ``num_classes``, ``in_channels``, ``image_size`` (H, W) and ``classes``.
Batches are dicts ``{"image": [B,C,H,W] float32, "label": [B] int64, "index": [B] int64}``.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

from torch.utils.data import Dataset

from distill.errors import DistillError, did_you_mean
from distill.registry import Registry

DATASETS: Registry = Registry("dataset")

# `python -m distill.data.fashion_mnist` imports this package (which imports that module) first;
# runpy then warns about the double import, which is harmless here.
warnings.filterwarnings(
    "ignore",
    message=r"'distill\.data\.fashion_mnist' found in sys\.modules",
    category=RuntimeWarning,
)

from distill.data import fashion_mnist, folder  # noqa: E402  (modules register themselves)
from distill.data.augment import BatchAugment  # noqa: E402
from distill.data.fashion_mnist import FashionMNIST  # noqa: E402
from distill.data.folder import image_folder, tensor_file  # noqa: E402
from distill.data.tensor import (  # noqa: E402
    SPLITS,
    TensorDataset,
    check_split,
    identity_collate,
)


def _check_options(name: str, factory: Any, options: dict[str, Any]) -> None:
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p in params if p not in ("split", "root")]
    for key in options:
        if key not in params:
            raise DistillError(
                f"unknown option {key!r} for dataset {name!r}.{did_you_mean(key, accepted)} "
                f"Accepted options: {', '.join(accepted) or '(none)'}"
            )


def build_dataset(
    name: str, split: str = "train", root: str | None = None, **kwargs: Any
) -> Dataset:
    """Build a registered dataset (see ``DATASETS.names()``) for ``split`` "train" or "test"."""
    factory = DATASETS.get(name)
    check_split(split)
    _check_options(name, factory, kwargs)
    return factory(split=split, root=root, **kwargs)


__all__ = [
    "DATASETS",
    "SPLITS",
    "BatchAugment",
    "FashionMNIST",
    "TensorDataset",
    "build_dataset",
    "check_split",
    "fashion_mnist",
    "folder",
    "identity_collate",
    "image_folder",
    "tensor_file",
]
