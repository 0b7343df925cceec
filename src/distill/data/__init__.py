"""Datasets, batched loading and batch augmentation.

Every dataset factory has the signature ``(split="train", root=None, **options) -> Dataset``
and its datasets expose ``num_classes``, ``in_channels``, ``image_size`` (H, W) and ``classes``; what
distill reads of a dataset is written down as protocols in ``data/base.py``.
Batches are dicts ``{"image": [B,C,H,W] float32, "label": [B] int64, "index": [B] int64}``.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch.utils.data import Dataset

from distill.registry import Registry

DATASETS: Registry = Registry("dataset")

# `python -m distill.data.fashion_mnist` imports this package (which imports that module) first;
# runpy then warns about the double import, which is harmless here.
warnings.filterwarnings(
    "ignore",
    message=r"'distill\.data\.(fashion_mnist|rotten_tomatoes|scenes|shakespeare)' found in sys\.modules",
    category=RuntimeWarning,
)

from distill.data import (  # noqa: E402  (modules register themselves)
    cifar,
    detection,
    fashion_mnist,
    folder,
    rotten_tomatoes,
    shakespeare,
    text,
)
from distill.data.augment import BatchAugment  # noqa: E402
from distill.data.fashion_mnist import FashionMNIST  # noqa: E402
from distill.data.folder import image_folder, tensor_file  # noqa: E402
from distill.data.tensor import (  # noqa: E402
    SPLITS,
    TensorDataset,
    check_split,
    identity_collate,
)
from distill.data.text import TextDataset, text_file  # noqa: E402


def build_dataset(
    name: str, split: str = "train", root: str | None = None, **kwargs: Any
) -> Dataset:
    """Build a registered dataset (see ``DATASETS.names()``) for ``split`` "train" or "test"."""
    DATASETS.get(name)  # an unknown name is reported before a bad split
    check_split(split)
    return DATASETS.create(name, kwargs, split=split, root=root)


__all__ = [
    "DATASETS",
    "SPLITS",
    "BatchAugment",
    "FashionMNIST",
    "TensorDataset",
    "TextDataset",
    "build_dataset",
    "check_split",
    "cifar",
    "detection",
    "fashion_mnist",
    "folder",
    "identity_collate",
    "image_folder",
    "rotten_tomatoes",
    "shakespeare",
    "tensor_file",
    "text",
    "text_file",
]
