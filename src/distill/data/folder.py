"""Datasets read from the user's own files into memory.

* ``image_folder``: ``<root>/<split>/<class>/*.png|jpg|jpeg|bmp`` (class = sub-folder name); with
  ``lazy: true`` the files are decoded per item when a batch needs them (:class:`ImageFolderDataset`,
  by ``data.num_workers`` worker processes), for folders larger than memory.
* ``tensors``: ``<root>/<split>.safetensors`` with ``images`` [N,C,H,W] (or [N,H,W]) and
  ``labels`` [N]; optional metadata ``classes`` (JSON list of names) or ``num_classes``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from distill.data import DATASETS
from distill.data.base import worker_loader
from distill.data.tensor import SPLITS, TensorDataset, check_split
from distill.errors import DistillError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
FOLDER_LAYOUT = "<root>/<split>/<class>/<image>.png|jpg|jpeg|bmp with split 'train' or 'test'"


def _need_root(root: str | None, dataset: str, layout: str) -> Path:
    if root is None:
        raise DistillError(f"dataset {dataset!r} needs root=<folder>; expected layout {layout}")
    return Path(root).expanduser()


def _class_names(root: Path) -> list[str]:
    """Sorted class folder names over every split present, so labels agree across splits."""
    names = {
        p.name
        for split in SPLITS
        if (root / split).is_dir()
        for p in (root / split).iterdir()
        if p.is_dir()
    }
    return sorted(names)


def _to_array(img: Any, size: tuple[int, int], grayscale: bool) -> np.ndarray:
    """A PIL image as uint8 [H,W,C], converted to L or RGB and resized to ``size`` (bilinear)."""
    from PIL import Image

    img = img.convert("L" if grayscale else "RGB")
    arr = np.array(img.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _load_image(path: Path, size: tuple[int, int], grayscale: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    # Importing ultralytics (the yolo extra) patches Image.open to pip-install a HEIF plugin on an
    # unreadable file; read with PIL's own open so a corrupt image stays a one-line error.
    patches = sys.modules.get("ultralytics.utils.patches")
    image_open = getattr(patches, "_image_open", Image.open)
    try:
        with image_open(path) as img:
            return _to_array(img, size, grayscale)  # [H,W,C]
    except (OSError, UnidentifiedImageError) as exc:
        raise DistillError(f"cannot read image {path} ({exc}); fix or delete the file") from None


def image_size_of(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``image_size`` (an int or (H, W)) as (H, W), checked."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) <= 0:
        raise DistillError(
            f"image_size must be a positive int or (height, width), got {image_size!r}; use e.g. 32"
        )
    return size  # type: ignore[return-value]


class LazyImages(Dataset):
    """Images decoded when an item is read (by the DataLoader's workers): resized to ``image_size``,
    scaled to [0, 1]. Items are ``{"image": float32 [C,H,W], "label": int64, "index": int64}``;
    :meth:`loader` batches them with the dataset's ``loader_options`` (``data.num_workers`` ...).
    Subclasses say how item ``i`` is read (:meth:`read`) and cut to a subset (:meth:`take`)."""

    name: str
    classes: list[str]
    image_size: tuple[int, int]
    grayscale: bool

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return 1 if self.grayscale else 3

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """Item ``i``'s uint8 image [H,W,C] (resized) and label."""
        raise NotImplementedError

    def take(self, indices: list[int]) -> LazyImages:
        """The items at ``indices``, in that order."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        array, label = self.read(int(i))
        return {
            "image": torch.from_numpy(array).permute(2, 0, 1).to(torch.float32).div_(255.0),
            "label": torch.tensor(label, dtype=torch.int64),
            "index": torch.tensor(int(i), dtype=torch.int64),
        }

    def loader(
        self, batch_size: int, sampler: Sampler[int] | Sequence[int] | None = None
    ) -> DataLoader:
        """Batches in ``sampler``'s order (index order when None), decoded by the configured workers."""
        if batch_size <= 0:
            raise DistillError(f"batch_size must be positive, got {batch_size}; use e.g. 128")
        return worker_loader(self, batch_size, sampler, self.__dict__.setdefault("_kept", {}))

    def __getstate__(self) -> dict[str, Any]:
        """What a worker process receives: the dataset without its kept loaders."""
        return {k: v for k, v in self.__dict__.items() if k != "_kept"}

    def subset(self, n: int, seed: int = 0) -> LazyImages:
        """``n`` items drawn with ``seed`` (kept in dataset order)."""
        if not 0 < n <= len(self):  # type: ignore[arg-type]
            raise DistillError(
                f"subset size {n} is out of range for dataset {self.name!r} with {len(self)} items; "  # type: ignore[arg-type]
                f"use 1..{len(self)}"  # type: ignore[arg-type]
            )
        gen = torch.Generator().manual_seed(seed)
        out = self.take(sorted(torch.randperm(len(self), generator=gen)[:n].tolist()))  # type: ignore[arg-type]
        if hasattr(self, "loader_options"):  # the subset's own loaders: not those of the whole
            out.loader_options = self.loader_options  # type: ignore[attr-defined]
        return out

    def __repr__(self) -> str:
        h, w = self.image_size
        return (
            f"{type(self).__name__}({self.name!r}, n={len(self)}, "  # type: ignore[arg-type]
            f"shape=[{self.in_channels},{h},{w}], classes={self.num_classes})"
        )


class ImageFolderDataset(LazyImages):
    """``image_folder`` with ``lazy: true``: only the file list is held; each file is decoded to the
    values the eager ``image_folder`` holds in memory."""

    def __init__(
        self,
        files: Sequence[tuple[Path, int]],
        classes: Sequence[str],
        size: tuple[int, int],
        grayscale: bool,
        name: str,
    ) -> None:
        self.files, self.classes = list(files), list(classes)
        self.image_size, self.grayscale, self.name = size, grayscale, name

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> tuple[np.ndarray, int]:
        path, label = self.files[i]
        return _load_image(path, self.image_size, self.grayscale), label

    def take(self, indices: list[int]) -> ImageFolderDataset:
        files = [self.files[i] for i in indices]
        return ImageFolderDataset(files, self.classes, self.image_size, self.grayscale, self.name)


class HFImageDataset(LazyImages):
    """Images of a Hugging Face ``datasets.Dataset`` column (``hf_dataset`` with images), decoded
    per item; ``labels`` are the class ids, one per row."""

    def __init__(
        self,
        part: Any,
        column: str,
        labels: Sequence[int],
        classes: Sequence[str],
        size: tuple[int, int],
        grayscale: bool,
        name: str,
    ) -> None:
        self.part, self.column, self.labels = part, column, list(labels)
        self.classes, self.image_size, self.grayscale = list(classes), size, grayscale
        self.name = name

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> tuple[np.ndarray, int]:
        image = self.part[i][self.column]
        if not hasattr(image, "convert"):
            raise DistillError(
                f"column {self.column!r} of dataset {self.name!r} holds {type(image).__name__} at "
                f"row {i}, not an image; set image_column to a datasets.Image column"
            )
        return _to_array(image, self.image_size, self.grayscale), self.labels[i]

    def take(self, indices: list[int]) -> HFImageDataset:
        return HFImageDataset(
            self.part.select(indices),
            self.column,
            [self.labels[i] for i in indices],
            self.classes,
            self.image_size,
            self.grayscale,
            self.name,
        )


@DATASETS.register("image_folder", kind="files")
def image_folder(
    split: str = "train",
    root: str | None = None,
    image_size: int | tuple[int, int] = 32,
    grayscale: bool = False,
    lazy: bool = False,
) -> TensorDataset | ImageFolderDataset:
    """Images resized to ``image_size`` (int or (H, W)); 1 channel if grayscale else 3 (RGB); with
    ``lazy`` decoded per item (:class:`ImageFolderDataset`) instead of all into memory at once."""
    check_split(split)
    base = _need_root(root, "image_folder", FOLDER_LAYOUT)
    folder = base / split
    if not folder.is_dir():
        raise DistillError(f"image folder {folder} does not exist; expected layout {FOLDER_LAYOUT}")
    size = image_size_of(image_size)
    classes = _class_names(base)
    files = [
        (path, label)
        for label, name in enumerate(classes)
        if (folder / name).is_dir()
        for path in sorted((folder / name).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if not files:
        raise DistillError(f"no images found under {folder}; expected layout {FOLDER_LAYOUT}")
    if lazy:
        return ImageFolderDataset(files, classes, size, grayscale, f"image_folder/{split}")
    arrays = np.stack([_load_image(path, size, grayscale) for path, _ in files])  # [N,H,W,C]
    images = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return TensorDataset(images, labels, classes=classes, name=f"image_folder/{split}")


def _metadata_classes(meta: dict[str, str], path: Path) -> tuple[list[str] | None, int | None]:
    try:
        classes = json.loads(meta["classes"]) if "classes" in meta else None
        num = int(meta["num_classes"]) if "num_classes" in meta else None
    except ValueError as exc:
        raise DistillError(
            f"bad 'classes'/'num_classes' metadata in {path} ({exc}); store a JSON list / an int"
        ) from None
    if classes is not None and not (
        isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    ):
        raise DistillError(
            f"metadata 'classes' in {path} must be a JSON list of strings; fix the file"
        )
    return classes, num


def _other_split_max(root: Path, split: str) -> int:
    """Largest label in the other split's file (-1 if absent) so both splits agree on num_classes."""
    from safetensors import SafetensorError, safe_open

    other = root / f"{SPLITS[1 - SPLITS.index(split)]}.safetensors"
    if not other.is_file():
        return -1
    try:
        with safe_open(str(other), framework="pt") as f:
            if "labels" not in f.keys():
                return -1
            labels = f.get_tensor("labels")
    except (SafetensorError, OSError) as exc:
        raise DistillError(
            f"cannot read {other} ({exc}); re-save it with safetensors.torch.save_file"
        ) from None
    return int(labels.max()) if labels.numel() else -1


@DATASETS.register("tensors", kind="files")
def tensor_file(split: str = "train", root: str | None = None) -> TensorDataset:
    """Tensors from ``<root>/<split>.safetensors``; uint8 images are scaled to [0, 1]."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    check_split(split)
    base = _need_root(root, "tensors", "<root>/train.safetensors and <root>/test.safetensors")
    path = base / f"{split}.safetensors"
    if not path.is_file():
        raise DistillError(
            f"tensor file {path} does not exist; save one with safetensors.torch.save_file({{'images': ..., 'labels': ...}}, '{path}')"
        )
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise DistillError(
            f"cannot read {path} ({exc}); re-save it with safetensors.torch.save_file"
        ) from None
    missing = [key for key in ("images", "labels") if key not in tensors]
    if missing:
        raise DistillError(
            f"{path} lacks tensor(s) {', '.join(missing)} (has {', '.join(sorted(tensors)) or 'none'}); save keys 'images' and 'labels'"
        )
    images, labels = tensors["images"], tensors["labels"]
    if images.ndim == 3:
        images = images.unsqueeze(1)
    classes, num_classes = _metadata_classes(meta, path)
    if classes is None and num_classes is None and labels.numel():
        num_classes = max(int(labels.max()), _other_split_max(base, split)) + 1
    return TensorDataset(
        images, labels, num_classes=num_classes, classes=classes, name=f"tensors/{split}"
    )
