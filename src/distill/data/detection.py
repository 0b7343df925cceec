"""Detection datasets in YOLO and COCO format, loaded and augmented by Ultralytics' own pipeline (``yolo`` extra).

``DetectionDataset`` wraps Ultralytics' ``YOLODataset`` (letterbox, mosaic, HSV, flips, affine; its collate)
and adds what distill's trainer expects of a dataset: ``num_classes``, ``in_channels``, ``image_size``,
``classes``, ``loader()`` and ``subset()``. Every label file is checked before Ultralytics reads it
(:func:`distill.data.yolo_format.check_yolo_labels`), because Ultralytics drops a malformed label file with
a warning, which would train on silently missing boxes.

Augmentation is seeded per image from ``(seed, epoch, index)``, so runs repeat and a resumed run sees the
same images as an uninterrupted one. Mosaic is the exception: Ultralytics picks mosaic partners from a
buffer of recently loaded images, which depends on history; with ``mosaic > 0`` a resumed run is
statistically, not bit-for-bit, the same.

Registered datasets (``data.name``): ``yolo`` (``root`` = a data.yaml), ``coco`` (a COCO instances json,
converted to YOLO layout once) and ``scenes`` (synthetic scenes of Fashion-MNIST items, generated once).
The ``test`` split is the data.yaml's ``val`` split (``eval_split: test`` picks ``test``).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from distill.data import DATASETS
from distill.data.coco import coco_to_yolo
from distill.data.scenes import scenes_dir
from distill.data.yolo_format import check_yolo_labels, load_data_yaml
from distill.errors import DistillError, did_you_mean
from distill.models.yolo import quiet, ultralytics

EVAL_SPLITS = ("val", "test")


class DetectionDataset(Dataset):
    """One split of a YOLO-format dataset, as Ultralytics loads it. Items are Ultralytics sample dicts."""

    def __init__(
        self,
        data_yaml: str | Path,
        split: str = "train",
        image_size: int = 640,
        augment: bool | None = None,
        hyp: dict[str, Any] | None = None,
        cache: bool = False,
        seed: int = 0,
        workers: int = 0,
        eval_split: str = "val",
    ) -> None:
        ultralytics()
        _check_options(image_size, eval_split, workers)
        self.data_yaml = Path(data_yaml)
        info = load_data_yaml(self.data_yaml)
        which = "train" if split == "train" else eval_split
        check_yolo_labels(self.data_yaml, which)
        self.split, self.seed, self.workers = split, int(seed), int(workers)
        self.augment = split == "train" if augment is None else bool(augment)
        self.classes = [str(n) for n in info["names"]]
        self.num_classes = len(self.classes)
        self.in_channels = int(info.get("channels", 3))
        self.image_size = (int(image_size), int(image_size))
        self.cfg = _ultralytics_cfg(image_size, hyp or {}, cache)
        from ultralytics.data.build import build_yolo_dataset

        data = {
            "names": dict(enumerate(self.classes)),
            "nc": self.num_classes,
            "channels": self.in_channels,
        }
        mode = "train" if self.augment else "val"
        with quiet():
            self.base = build_yolo_dataset(
                self.cfg, [str(p) for p in info[which]], 1, data, mode=mode
            )
        self.indices = list(range(len(self.base)))
        self.name = self.data_yaml.parent.name

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.base[self.indices[i]]

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return self.base.collate_fn(items)

    def loader(
        self,
        batch_size: int,
        sampler: Sampler[int] | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        """Batches as Ultralytics collates them; training augmentation seeded by ``(seed, epoch, index)``."""
        if batch_size <= 0:
            raise DistillError(f"batch_size must be positive, got {batch_size}; use e.g. 16")
        items: Dataset = _Seeded(self, _epoch_of(sampler)) if self.augment else self
        return DataLoader(
            items, batch_size=batch_size, sampler=sampler, shuffle=shuffle, drop_last=drop_last,
            generator=generator, collate_fn=self.collate, num_workers=self.workers,
        )  # fmt: skip

    def subset(self, n: int, seed: int = 0) -> DetectionDataset:
        """A seeded random subset of ``n`` images (a view: nothing is reloaded)."""
        if not 0 < n <= len(self):
            raise DistillError(
                f"subset size {n} is out of range for a detection split with {len(self)} images; "
                f"use 1..{len(self)}"
            )
        view = object.__new__(DetectionDataset)
        view.__dict__.update(self.__dict__)
        picked = random.Random(seed).sample(range(len(self)), n)
        view.indices = [self.indices[i] for i in sorted(picked)]
        return view


class _Seeded(Dataset):
    """Seeds Python's and NumPy's RNGs (Ultralytics' augmentations use both) before each image."""

    def __init__(self, dataset: DetectionDataset, epoch: int) -> None:
        self.dataset, self.epoch = dataset, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        digest = hashlib.sha256(f"{self.dataset.seed}:{self.epoch}:{i}".encode()).digest()
        seed = int.from_bytes(digest[:4], "little")
        random.seed(seed)
        np.random.seed(seed)
        return self.dataset[i]


def _epoch_of(sampler: Any) -> int:
    """The epoch of the trainer's (possibly wrapped) DistributedSampler, 0 without one."""
    while sampler is not None and not hasattr(sampler, "epoch"):
        sampler = getattr(sampler, "inner", None)
    return int(getattr(sampler, "epoch", 0))


def _check_options(image_size: Any, eval_split: Any, workers: Any) -> None:
    if not (isinstance(image_size, int) and image_size >= 32 and image_size % 32 == 0):
        raise DistillError(
            f"detection data: image_size must be a multiple of 32 (the largest YOLO stride), got "
            f"{image_size!r}; use e.g. 160, 320 or 640"
        )
    if eval_split not in EVAL_SPLITS:
        raise DistillError(
            f"detection data: eval_split must be val or test, got {eval_split!r}"
            f"{did_you_mean(str(eval_split), EVAL_SPLITS)}"
        )
    if not (isinstance(workers, int) and workers >= 0):
        raise DistillError(f"detection data: workers must be an int >= 0, got {workers!r}")


def _ultralytics_cfg(image_size: int, hyp: dict[str, Any], cache: bool) -> Any:
    """Ultralytics' default configuration with ``imgsz``, ``cache`` and augmentation overrides ``hyp``."""
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG_DICT

    for key in hyp:
        if key not in DEFAULT_CFG_DICT:
            raise DistillError(
                f"detection data: unknown augmentation setting {key!r} in hyp.{did_you_mean(key, DEFAULT_CFG_DICT)} "
                "Use Ultralytics' names (mosaic, mixup, fliplr, hsv_h, hsv_s, hsv_v, degrees, translate, "
                "scale, ...)"
            )
    return get_cfg(
        DEFAULT_CFG_DICT,
        {**hyp, "imgsz": image_size, "cache": "ram" if cache else False, "workers": 0},
    )


def _options(
    image_size: int, augment: bool | None, hyp: dict[str, Any] | None, cache: bool, seed: int,
    workers: int, eval_split: str,
) -> dict[str, Any]:  # fmt: skip
    return dict(
        image_size=image_size, augment=augment, hyp=hyp, cache=cache, seed=seed, workers=workers,
        eval_split=eval_split,
    )  # fmt: skip


@DATASETS.register("yolo", description="a YOLO-format dataset: root = its data.yaml (yolo extra)")
def yolo(
    split: str = "train",
    root: str | None = None,
    image_size: int = 640,
    augment: bool | None = None,
    hyp: dict[str, Any] | None = None,
    cache: bool = False,
    seed: int = 0,
    workers: int = 0,
    eval_split: str = "val",
) -> DetectionDataset:
    """``root`` is the data.yaml; ``hyp`` overrides Ultralytics' augmentation settings (mosaic, fliplr, ...)."""
    if root is None:
        raise DistillError("dataset 'yolo' needs data.root: the path of the dataset's data.yaml")
    opts = _options(image_size, augment, hyp, cache, seed, workers, eval_split)
    return DetectionDataset(root, split, **opts)


@DATASETS.register(
    "coco", description="a COCO instances json + images, converted to YOLO layout once (yolo extra)"
)
def coco(
    split: str = "train",
    root: str | None = None,
    annotations: str = "annotations/instances_train.json",
    images: str = "images/train",
    val_annotations: str = "annotations/instances_val.json",
    val_images: str = "images/val",
    image_size: int = 640,
    augment: bool | None = None,
    hyp: dict[str, Any] | None = None,
    cache: bool = False,
    seed: int = 0,
    workers: int = 0,
) -> DetectionDataset:
    """Paths are relative to ``root``; the YOLO-layout copy (labels, image links) goes to ``root/yolo``."""
    if root is None:
        raise DistillError(
            "dataset 'coco' needs data.root: the folder holding the annotations and images"
        )
    base = Path(root)
    out = base / "yolo"
    coco_to_yolo(base / annotations, base / images, out, split="train")
    data_yaml = coco_to_yolo(base / val_annotations, base / val_images, out, split="val")
    opts = _options(image_size, augment, hyp, cache, seed, workers, "val")
    return DetectionDataset(data_yaml, split, **opts)


@DATASETS.register(
    "scenes",
    description="synthetic detection scenes: Fashion-MNIST items pasted on canvases (generated once)",
)
def scenes(
    split: str = "train",
    root: str | None = None,
    train_images: int = 512,
    val_images: int = 128,
    image_size: int = 160,
    scene_seed: int = 0,
    augment: bool | None = None,
    hyp: dict[str, Any] | None = None,
    cache: bool = False,
    seed: int = 0,
    workers: int = 0,
) -> DetectionDataset:
    """Scenes of ``image_size`` pixels built from Fashion-MNIST (``root``: its files, as for fashion_mnist),
    cached under the distill cache; ``scene_seed`` picks the scenes, ``seed`` the augmentation."""
    folder = scenes_dir(
        train_images=train_images, val_images=val_images, image_size=image_size, seed=scene_seed,
        root=root,
    )  # fmt: skip
    opts = _options(image_size, augment, hyp, cache, seed, workers, "val")
    return DetectionDataset(Path(folder) / "data.yaml", split, **opts)
