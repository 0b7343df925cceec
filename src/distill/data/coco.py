"""Convert a COCO instances file into the YOLO (Ultralytics) layout that ``data/yolo_format.py`` reads.

Only the standard library and PyYAML are used (no pycocotools).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from distill.data.yolo_format import SPLIT_KEYS, class_names, read_yaml
from distill.errors import DistillError, did_you_mean

# COCO boxes up to this far past the image edge are clipped; further is an error
EDGE_SLACK_PX = 1.0


def _read_coco(path: Path) -> dict:
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DistillError(f"{path} is not valid JSON ({exc}); fix or re-export the file") from None
    missing = [
        k for k in ("images", "annotations", "categories") if not isinstance(coco.get(k), list)
    ]
    if not isinstance(coco, dict) or missing:
        raise DistillError(
            f"{path} lacks the list(s) {missing}; pass a COCO instances file (images, annotations, categories)"
        )
    return coco


def _coco_categories(coco: dict, path: Path) -> tuple[dict[int, int], list[str]]:
    """COCO category id -> YOLO class (sorted id order), and the class names."""
    if not coco["categories"]:
        raise DistillError(f"{path}: 'categories' is empty; add at least one {{id, name}} entry")
    try:
        by_id = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
    except (KeyError, TypeError, ValueError):
        raise DistillError(f"{path}: every category needs an integer 'id' and a 'name'") from None
    ids = sorted(by_id)
    return {cid: i for i, cid in enumerate(ids)}, [by_id[cid] for cid in ids]


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _coco_images(coco: dict, path: Path) -> dict[int, dict]:
    images = {}
    for image in coco["images"]:
        ok = isinstance(image, dict) and "id" in image and "file_name" in image
        if not ok or not all(_positive(image.get(k)) for k in ("width", "height")):
            raise DistillError(
                f"{path}: image {image.get('id', image) if isinstance(image, dict) else image!r} "
                "needs id, file_name and positive width and height"
            )
        images[image["id"]] = image
    return images


def _yolo_box(ann: dict, image: dict, where: str) -> tuple[float, float, float, float]:
    """COCO pixel ``[x, y, w, h]`` (top-left corner) -> normalised ``cx, cy, w, h``."""
    bbox = ann.get("bbox")
    if not (
        isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)
    ):
        raise DistillError(f"{where}: bbox {bbox!r} is not [x, y, w, h]; fix the annotation")
    x, y, w, h = (float(v) for v in bbox)
    width, height = float(image["width"]), float(image["height"])
    if not all(math.isfinite(v) for v in bbox) or w <= 0 or h <= 0:
        raise DistillError(
            f"{where}: bbox {bbox} has a non-positive size; fix or drop the annotation"
        )
    slack = EDGE_SLACK_PX
    if x < -slack or y < -slack or x + w > width + slack or y + h > height + slack:
        raise DistillError(
            f"{where}: bbox {bbox} lies outside image {image['id']} ({image['width']}x{image['height']}); "
            "fix the annotation (COCO boxes are [x, y, w, h] in pixels)"
        )
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, width), min(y + h, height)
    return (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height


def _coco_labels(coco: dict, path: Path) -> tuple[dict[int, list[str]], list[str]]:
    """Label lines per image id (every image, background ones empty) and the class names."""
    classes, names = _coco_categories(coco, path)
    images = _coco_images(coco, path)
    lines: dict[int, list[str]] = {image_id: [] for image_id in images}
    for ann in coco["annotations"]:
        where = f"{path}: annotation {ann.get('id', '?') if isinstance(ann, dict) else ann!r}"
        if not isinstance(ann, dict):
            raise DistillError(f"{where} is not an object; fix the file")
        if ann.get("image_id") not in images:
            raise DistillError(
                f"{where}: image_id {ann.get('image_id')!r} is not in 'images'; fix it"
            )
        if ann.get("category_id") not in classes:
            raise DistillError(
                f"{where}: category_id {ann.get('category_id')!r} is not one of {sorted(classes)}; fix it"
            )
        if ann.get("iscrowd"):
            continue
        box = _yolo_box(ann, images[ann["image_id"]], where)
        lines[ann["image_id"]].append(
            f"{classes[ann['category_id']]} " + " ".join(f"{v:.6f}" for v in box)
        )
    return {images[i]["file_name"]: v for i, v in lines.items()}, names


def _link_or_copy(source: Path, target: Path, copy: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            target.symlink_to(source.resolve())
            return
        except OSError:  # file systems without symlinks: copy instead
            pass
    shutil.copy2(source, target)


def _merge_data_yaml(out: Path, split: str, names: list[str]) -> Path:
    path = out / "data.yaml"
    data = read_yaml(path) if path.is_file() else {}
    if data.get("names") is not None and class_names(data, path) != names:
        raise DistillError(
            f"{path} has names {class_names(data, path)} but the COCO file gives {names}; "
            "convert into a new out_dir"
        )
    data.update({"path": str(out), split: f"images/{split}", "nc": len(names)})
    data["names"] = dict(enumerate(names))
    order = ["path", *SPLIT_KEYS, "nc", "names"]
    data = {k: data[k] for k in order if k in data} | {
        k: v for k, v in data.items() if k not in order
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _source_stamp(path: Path, images_dir: Path) -> dict[str, str]:
    """What a conversion was made from: the annotation file (path and SHA-256) and the images folder."""
    if not path.is_file():
        raise DistillError(f"COCO annotations {path} not found; pass an instances_*.json file")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return {"annotations": str(path), "sha256": digest.hexdigest(), "images": str(images_dir)}


def _converted(marker: Path, stamp: dict[str, str], data_yaml: Path, split: str) -> bool:
    """``marker`` says this split was already converted from the same source (so it is reused)."""
    try:
        same = json.loads(marker.read_text(encoding="utf-8")) == stamp
    except (OSError, ValueError):
        return False
    return same and data_yaml.is_file() and split in read_yaml(data_yaml)


def coco_to_yolo(
    annotations_json: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    split: str = "train",
    copy: bool = False,
) -> Path:
    """Convert a COCO instances file to ``out_dir/{images,labels}/<split>`` and return ``data.yaml``.

    Category ids map to classes 0..nc-1 in sorted id order; crowd boxes are skipped; images without
    annotations become backgrounds (empty label files). Images are symlinked (copied with ``copy=True``
    or where links fail). Everything is checked before anything is written. An existing
    ``data.yaml`` gains the split (its names must match), so run once per split. A split already
    converted from the same file (``out_dir/coco-<split>.json`` records its SHA-256) is reused.
    """
    path = Path(annotations_json).expanduser().resolve()
    images_dir, out = Path(images_dir).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    if split not in SPLIT_KEYS:
        raise DistillError(
            f"split {split!r} is not one of {SPLIT_KEYS}" + did_you_mean(split, SPLIT_KEYS)
        )
    stamp, marker = _source_stamp(path, images_dir), out / f"coco-{split}.json"
    if _converted(marker, stamp, out / "data.yaml", split):
        return out / "data.yaml"
    labels, names = _coco_labels(_read_coco(path), path)
    for file_name in labels:
        if not (images_dir / file_name).is_file():
            raise DistillError(
                f"{path}: image file {file_name} not found in {images_dir}; pass the images folder"
            )
    for folder in (out / "images" / split, out / "labels" / split):
        if folder.exists() and any(folder.iterdir()):
            raise DistillError(
                f"{folder} holds files that are not a conversion of {path.name}; "
                "convert into a new out_dir or delete the folder"
            )
    for file_name, lines in labels.items():
        _link_or_copy(images_dir / file_name, out / "images" / split / file_name, copy)
        label = (out / "labels" / split / file_name).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    data_yaml = _merge_data_yaml(out, split, names)
    # last: marks it complete
    marker.write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    return data_yaml
