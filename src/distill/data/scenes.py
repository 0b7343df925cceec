"""Synthetic detection scenes from Fashion-MNIST, written as an Ultralytics (YOLO) dataset.

Each scene is a ``size x size`` RGB PNG: a smooth random colour field with pixel noise, on which 1 to 6
Fashion-MNIST items are pasted, each resized to a side drawn log-uniformly from ``scales`` (pixels of the
item's 28x28 cell, so small, medium and large objects all occur), tinted with a random colour and blended
by its own intensity. The label is the item's class and its TIGHT box: the bounding box of the pixels the
item actually changed (intensity >= ``ALPHA_MIN`` after resizing; fainter resampling halo is dropped
before pasting, so every pixel outside the box is untouched background). A new item whose box would
overlap an earlier one with IoU >= ``MAX_IOU`` is moved (``PLACEMENT_TRIES`` tries), else skipped.

Train scenes take items from the Fashion-MNIST train split and val scenes from its test split, so the
two never share an item. Same arguments and seed give byte-identical files.

``python -m distill.data.scenes OUT [--train N] [--val N] [--size S] [--seed S]`` writes a dataset and
prints its ``data.yaml``. Only numpy, PIL and PyYAML are used (no ultralytics).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from distill.data import fashion_mnist as fm
from distill.errors import DistillError

GENERATOR_VERSION = 1  # bump when the output for given arguments changes (invalidates the cache)
ALPHA_MIN = 16 / 255  # resized item pixels fainter than this are not pasted (and not in the box)
MAX_IOU = 0.3
PLACEMENT_TRIES = 10
SPLIT_SOURCES = {"train": "train", "val": "test"}  # scene split -> Fashion-MNIST split


# --- one scene ---------------------------------------------------------------------------------


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 [size, size, 3] in [0, 1]: a bilinear-upsampled 4x4 colour grid plus pixel noise."""
    from PIL import Image

    base = rng.uniform(0.1, 0.9, 3)
    coarse = np.clip(base + rng.normal(0.0, 0.15, (4, 4, 3)), 0.0, 1.0)
    channels = [
        np.asarray(
            Image.fromarray(coarse[..., c].astype(np.float32), mode="F").resize(
                (size, size), Image.Resampling.BILINEAR
            )
        )
        for c in range(3)
    ]
    field = np.stack(channels, axis=-1) + rng.normal(0.0, 0.04, (size, size, 3))
    return np.clip(field, 0.0, 1.0).astype(np.float32)


def _resized_alpha(item: np.ndarray, side: int) -> np.ndarray:
    """The 28x28 uint8 item resized to side x side as float32 alpha in [0, 1], halo below ALPHA_MIN zeroed."""
    from PIL import Image

    alpha = np.asarray(
        Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32
    )
    alpha = alpha / 255.0
    alpha[alpha < ALPHA_MIN] = 0.0
    return alpha


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two pixel boxes (x0, y0, x1, y1), x1/y1 exclusive."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _place(
    rng: np.random.Generator, alpha: np.ndarray, size: int, boxes: list[tuple[int, int, int, int]]
) -> tuple[int, int, tuple[int, int, int, int]] | None:
    """Top-left corner of the item cell and its tight box on the canvas, or None if it would overlap."""
    ys, xs = np.nonzero(alpha)
    if len(xs) == 0:  # an empty item has no box
        return None
    tight = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    side = alpha.shape[0]
    for _ in range(PLACEMENT_TRIES):
        x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
        box = (x + tight[0], y + tight[1], x + tight[2], y + tight[3])
        if all(_iou(box, other) < MAX_IOU for other in boxes):
            return x, y, box
    return None


def render_scene(
    rng: np.random.Generator,
    items: np.ndarray,
    labels: np.ndarray,
    size: int,
    count: tuple[int, int],
    scales: tuple[int, int],
) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int, int]]]]:
    """One scene: uint8 RGB [size, size, 3] and its objects as (class, (x0, y0, x1, y1)) in pixels.

    ``items`` [N, 28, 28] uint8 and ``labels`` [N] are the source split; box corners x1/y1 are exclusive.
    """
    canvas = _background(rng, size)
    objects: list[tuple[int, tuple[int, int, int, int]]] = []
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        index = int(rng.integers(0, len(items)))
        side = int(round(np.exp(rng.uniform(np.log(scales[0]), np.log(scales[1])))))
        shift = rng.uniform(0.3, 0.7, 3)  # per channel, away from the background under the item
        alpha = _resized_alpha(items[index], side)
        placed = _place(rng, alpha, size, [box for _, box in objects])
        if placed is None:
            continue
        x, y, box = placed
        a = alpha[..., None]
        cell = canvas[y : y + side, x : x + side]
        tint = ((cell.mean(axis=(0, 1)) + shift) % 1.0).astype(np.float32)
        canvas[y : y + side, x : x + side] = cell * (1.0 - a) + tint * a
        objects.append((int(labels[index]), box))
    return np.round(canvas * 255.0).astype(np.uint8), objects


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator behind scene ``index`` of ``split``: scenes are independent of each other."""
    return np.random.default_rng([seed, list(SPLIT_SOURCES).index(split), index])


def yolo_line(cls: int, box: tuple[int, int, int, int], width: int, height: int) -> str:
    """``cls cx cy w h`` with centre and size normalised by the image size (pixel-edge box corners)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
    return f"{cls} {cx:.6f} {cy:.6f} {(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}"


# --- a dataset ---------------------------------------------------------------------------------


def default_scales(image_size: int) -> tuple[int, int]:
    """(image_size // 10, image_size // 2) pixels, at least 4: (16, 80) on a 160-pixel canvas."""
    return max(4, image_size // 10), max(4, image_size // 2)


def _check_args(
    train_images: int, val_images: int, image_size: int, items: tuple, scales: tuple
) -> None:
    if train_images < 1 or val_images < 1:
        raise DistillError(
            f"scenes need at least 1 train and 1 val image, got train_images={train_images}, "
            f"val_images={val_images}; pass positive counts"
        )
    if not (len(items) == 2 and 0 <= items[0] <= items[1]):
        raise DistillError(
            f"items={tuple(items)} must be (min, max) objects per scene with 0 <= min <= max"
        )
    if not (len(scales) == 2 and 4 <= scales[0] <= scales[1] <= image_size):
        raise DistillError(
            f"scales={tuple(scales)} must be (min, max) item sizes in pixels with "
            f"4 <= min <= max <= image_size={image_size}"
        )


def _write_split(
    out: Path,
    split: str,
    n: int,
    source: tuple[np.ndarray, np.ndarray],
    options: dict,
) -> None:
    from PIL import Image

    image_dir, label_dir = out / "images" / split, out / "labels" / split
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    size = options["image_size"]
    for i in range(n):
        rng = scene_rng(options["seed"], split, i)
        image, objects = render_scene(
            rng, *source, size, tuple(options["items"]), tuple(options["scales"])
        )
        Image.fromarray(image, mode="RGB").save(image_dir / f"{i:06d}.png", format="PNG")
        lines = [yolo_line(cls, box, size, size) for cls, box in objects]
        (label_dir / f"{i:06d}.txt").write_text("".join(f"{line}\n" for line in lines))


def _data_yaml(root: Path) -> str:
    data = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "nc": len(fm.CLASSES),
        "names": dict(enumerate(fm.CLASSES)),
    }
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _generate(tmp: Path, final: Path, options: dict, folder: Path) -> None:
    """Write the whole dataset into ``tmp``; its data.yaml already names ``final`` (renamed later)."""
    for split, source_split in SPLIT_SOURCES.items():
        source = fm.load_split(folder, source_split)
        _write_split(tmp, split, options[f"{split}_images"], source, options)
    (tmp / "data.yaml").write_text(_data_yaml(final), encoding="utf-8")
    manifest = {"generator_version": GENERATOR_VERSION, **options, "source": str(folder)}
    (tmp / "scenes.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def _options(
    train_images: int,
    val_images: int,
    image_size: int,
    items: tuple[int, int],
    scales: tuple[int, int] | None,
    seed: int,
) -> dict:
    if scales is None:
        scales = default_scales(image_size)
    _check_args(train_images, val_images, image_size, items, scales)
    return {
        "train_images": int(train_images),
        "val_images": int(val_images),
        "image_size": int(image_size),
        "items": [int(v) for v in items],
        "scales": [int(v) for v in scales],
        "seed": int(seed),
    }


def _build_atomically(out: Path, options: dict, folder: Path) -> None:
    """Generate next to ``out`` and rename into place, so ``out`` only ever holds a whole dataset."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part"))
    try:
        _generate(tmp, out.resolve(), options, folder)
        # fails if ``out`` was filled meanwhile (another process): caller checks
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def make_scenes(
    out_dir: str | os.PathLike[str],
    train_images: int = 1000,
    val_images: int = 200,
    image_size: int = 160,
    items: tuple[int, int] = (1, 6),
    scales: tuple[int, int] | None = None,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a scenes dataset into ``out_dir`` (new or empty) and return its ``data.yaml``.

    Layout: ``images/{train,val}/NNNNNN.png``, ``labels/{train,val}/NNNNNN.txt`` (``cls cx cy w h``
    per object, normalised to [0, 1]), ``data.yaml`` (absolute ``path``, 10 Fashion-MNIST ``names``)
    and ``scenes.json`` (the arguments). ``items``: (min, max) objects per scene; ``scales``: (min, max)
    side in pixels of a pasted 28x28 item; ``root``: the Fashion-MNIST folder (see
    ``distill.data.fashion_mnist``). The folder appears only when complete.
    """
    out = Path(out_dir).expanduser()
    options = _options(train_images, val_images, image_size, items, scales, seed)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DistillError(
            f"{out} already exists and is not an empty folder; choose a new out_dir or delete it"
        )
    folder = fm.ensure_fashion_mnist(root)
    try:
        _build_atomically(out, options, folder)
    except OSError as exc:
        raise DistillError(
            f"cannot write scenes to {out} ({exc}); choose a writable out_dir"
        ) from None
    return out.resolve() / "data.yaml"


def scenes_dir(
    train_images: int = 1000,
    val_images: int = 200,
    image_size: int = 160,
    items: tuple[int, int] = (1, 6),
    scales: tuple[int, int] | None = None,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """The cached dataset for these arguments, generated on first use; returns its folder.

    ``$DISTILL_CACHE`` (default ``~/.cache/distill``) ``/data/scenes-<12 hex digits>``, the digits
    hashing the arguments, the generator version and the Fashion-MNIST folder used.
    """
    options = _options(train_images, val_images, image_size, items, scales, seed)
    folder = fm.ensure_fashion_mnist(root)
    key = {"generator_version": GENERATOR_VERSION, **options, "source": str(folder.resolve())}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))
    out = cache.expanduser() / "data" / f"scenes-{digest}"
    if (out / "data.yaml").is_file():
        return out.resolve()
    try:
        _build_atomically(out, options, folder)
    except OSError as exc:
        if not (out / "data.yaml").is_file():  # not just another process finishing first
            raise DistillError(
                f"cannot write scenes to {out} ({exc}); set DISTILL_CACHE to a writable folder"
            ) from None
    return out.resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distill.data.scenes", description=__doc__.split("\n")[0]
    )
    parser.add_argument("out", help="new or empty folder to write the dataset into")
    parser.add_argument("--train", type=int, default=1000, help="train scenes (default 1000)")
    parser.add_argument("--val", type=int, default=200, help="val scenes (default 200)")
    parser.add_argument("--size", type=int, default=160, help="image side in pixels (default 160)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=None, help="Fashion-MNIST folder")
    args = parser.parse_args(argv)
    try:
        print(
            make_scenes(args.out, args.train, args.val, args.size, seed=args.seed, root=args.root)
        )
    except DistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
