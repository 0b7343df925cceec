"""Read and check detection datasets in the YOLO (Ultralytics) layout (COCO into it: ``data/coco.py``).

Layout: a ``data.yaml`` with ``path`` (dataset root; relative paths are taken relative to the YAML's
folder), ``train`` and ``val`` (image folders, or lists of them, relative to ``path``) and ``names``
(a list, or a mapping ``{0: name, ...}``; ``nc`` optional, must match). Each image
``.../images/<split>/a.png`` has its labels in ``.../labels/<split>/a.txt`` (the last ``images``
folder swapped for ``labels``): one ``class cx cy w h`` line per box, the centre and size divided by the
image width/height, so all four are in [0, 1]. An image without a label file (or with an empty one) is a
background image. Only the standard library and PyYAML are used (no ultralytics, no pycocotools).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill.errors import DistillError, did_you_mean
from distill.safe_load import pickle_globals

IMAGE_SUFFIXES = frozenset(
    {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"}
)  # Ultralytics' IMG_FORMATS
TOLERANCE = 1e-6  # coordinates may exceed [0, 1] by this much (rounding in converters)
SPLIT_KEYS = ("train", "val", "test")


# --- data.yaml -----------------------------------------------------------------------------------


def read_yaml(path: Path) -> dict:
    """A data.yaml as a mapping; a missing file, invalid YAML or a non-mapping is a DistillError."""
    if not path.is_file():
        near = [p.name for p in path.parent.glob("*.y*ml")] if path.parent.is_dir() else []
        raise DistillError(
            f"data YAML {path} not found; pass the path of an existing data.yaml"
            + did_you_mean(path.name, near)
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise DistillError(f"{path} is not valid YAML ({reason}); fix the file") from None
    if not isinstance(data, dict):
        raise DistillError(
            f"{path} holds {type(data).__name__}, not a mapping; write keys path, train, val, names"
        )
    return data


def class_names(data: dict, path: Path) -> list[str]:
    """``names`` as a list (from a list or a {0: a, 1: b} mapping), checked against ``nc``."""
    names, nc = data.get("names"), data.get("nc")
    if names is None and nc is None:
        raise DistillError(f"{path}: key 'names' is missing; add names: [class0, class1, ...]")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
        raise DistillError(f"{path}: nc: {nc!r} is not a positive integer; fix it or remove it")
    if names is None:
        return [f"class{i}" for i in range(nc)]
    if isinstance(names, dict):
        if set(names) != set(range(len(names))):
            raise DistillError(
                f"{path}: names keys {list(names)} are not 0..{len(names) - 1}; "
                "number the classes from 0 without gaps"
            )
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DistillError(
            f"{path}: names: {names!r} is not a non-empty list or mapping of class names"
        )
    if nc is not None and nc != len(names):
        raise DistillError(
            f"{path}: nc: {nc} but names has {len(names)} entries; make them agree (or drop nc)"
        )
    return [str(name) for name in names]


def _image_dirs(data: dict, key: str, root: Path, path: Path) -> list[Path]:
    value = data[key]
    entries = value if isinstance(value, list) else [value]
    if not entries or not all(isinstance(e, str) and e for e in entries):
        raise DistillError(f"{path}: {key}: {value!r} is not a folder or a list of folders")
    dirs = [(root / entry).resolve() for entry in entries]
    for entry, folder in zip(entries, dirs, strict=True):
        if not folder.exists():
            raise DistillError(
                f"{path}: {key}: {entry} resolves to {folder}, which does not exist; "
                "fix the path (relative to 'path') or create the images"
            )
    return dirs


def load_data_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a YOLO ``data.yaml``.

    Returns ``{"yaml": Path, "path": Path, "names": [str], "nc": int, "channels": int, "train": [Path],
    "val": [Path]}`` (plus ``"test"`` when given); image folders are absolute and exist.
    """
    path = Path(path).expanduser().resolve()
    data = read_yaml(path)
    for key in ("train", "val"):
        if not data.get(key):
            raise DistillError(
                f"{path}: key '{key}' is missing; add {key}: images/{key} (the {key} image folder)"
                + did_you_mean(key, [str(k) for k in data])
            )
    root = Path(str(data.get("path") or path.parent)).expanduser()
    root = root if root.is_absolute() else path.parent / root
    names = class_names(data, path)
    out: dict[str, Any] = {"yaml": path, "path": root.resolve(), "names": names, "nc": len(names)}
    out["channels"] = data.get("channels", 3)
    if out["channels"] not in (1, 3) or isinstance(out["channels"], bool):
        raise DistillError(f"{path}: channels: {out['channels']!r} is not 1 or 3; fix or remove it")
    for key in SPLIT_KEYS:
        if data.get(key):
            out[key] = _image_dirs(data, key, root, path)
    return out


# --- label files ---------------------------------------------------------------------------------


@dataclass
class LabelSummary:
    """What ``check_yolo_labels`` found in one split."""

    split: str
    images: int = 0
    boxes: int = 0
    backgrounds: int = 0  # images without a label file, or with an empty one
    per_class: dict[str, int] = field(default_factory=dict)  # class name -> boxes
    labels_without_image: list[Path] = field(default_factory=list)


def label_path(image: Path) -> Path:
    """The label file of ``image``: last ``images`` folder swapped for ``labels``, suffix ``.txt``."""
    parts = list(image.parts)
    if "images" not in parts[:-1]:
        return image.with_suffix(".txt")
    i = len(parts) - 2 - parts[:-1][::-1].index("images")
    parts[i] = "labels"
    return Path(*parts).with_suffix(".txt")


def _images_in(folder: Path) -> Iterator[Path]:
    if folder.is_file():  # a .txt list of image paths; relative ones are taken from its folder
        for line in folder.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield (folder.parent / line.strip()).resolve()
        return
    for item in sorted(folder.rglob("*")):
        if item.suffix.lower() in IMAGE_SUFFIXES and item.is_file():
            yield item


def _bad(where: str, problem: str, fix: str) -> DistillError:
    return DistillError(f"{where}: {problem}; {fix}")


def parse_label_line(line: str, where: str, nc: int) -> tuple[int, float, float, float, float]:
    """One ``class cx cy w h`` line, checked; ``where`` (``file:line``) starts every error message."""
    fields = line.split()
    if len(fields) > 5 and (len(fields) - 1) % 2 == 0:
        raise _bad(
            where,
            f"{len(fields) - 1} coordinates (a polygon segment), but only boxes are supported",
            "convert segments to boxes: class cx cy w h",
        )
    if len(fields) != 5:
        raise _bad(where, f"{len(fields)} values in {line.strip()!r}", "write 5: class cx cy w h")
    try:
        cls_value, *coords = (float(v) for v in fields)
    except ValueError:
        raise _bad(where, f"{line.strip()!r} holds a non-number", "write 5 numbers") from None
    if not cls_value.is_integer() or not 0 <= cls_value < nc:
        raise _bad(
            where,
            f"class {fields[0]} is not an integer in [0, {nc})",
            f"use a class id 0..{nc - 1}",
        )
    for name, value, text in zip(("cx", "cy", "w", "h"), coords, fields[1:], strict=True):
        if not math.isfinite(value) or not -TOLERANCE <= value <= 1 + TOLERANCE:
            raise _bad(
                where,
                f"{name} = {text} is outside [0, 1]",
                "normalise by the image size (pixels / width or height)",
            )
    if coords[2] <= 0 or coords[3] <= 0:
        raise _bad(
            where, f"box size w={fields[3]} h={fields[4]} is not positive", "drop empty boxes"
        )
    return int(cls_value), *coords


def _check_label_file(path: Path, nc: int) -> list[int]:
    """Class ids of the boxes in one label file (blank lines ignored)."""
    classes = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            classes.append(parse_label_line(line, f"{path}:{number}", nc)[0])
    return classes


def _dataset(data_yaml_or_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(data_yaml_or_dir).expanduser()
    if path.is_dir():
        found = [path / n for n in ("data.yaml", "data.yml") if (path / n).is_file()]
        if not found:
            raise DistillError(f"{path} holds no data.yaml; pass the dataset's data YAML file")
        path = found[0]
    return load_data_yaml(path)


def check_yolo_labels(
    data_yaml_or_dir: str | os.PathLike[str], split: str = "train"
) -> LabelSummary:
    """Check every label file of ``split`` (train, val or test); the first bad line raises ``file:line``.

    Label files with no image are listed in ``labels_without_image`` (Ultralytics ignores them).
    """
    data = _dataset(data_yaml_or_dir)
    if split not in SPLIT_KEYS or split not in data:
        raise DistillError(
            f"{data['yaml']} has no '{split}' split; use one of "
            + ", ".join(k for k in SPLIT_KEYS if k in data)
            + did_you_mean(split, [k for k in SPLIT_KEYS if k in data])
        )
    names, summary = data["names"], LabelSummary(split=split)
    counts = [0] * len(names)
    seen: set[Path] = set()
    caches: set[Path] = set()
    for folder in data[split]:
        for image in _images_in(folder):
            summary.images += 1
            labels = label_path(image)
            seen.add(labels)
            caches.add(labels.parent.with_suffix(".cache"))
            classes = _check_label_file(labels, len(names)) if labels.is_file() else []
            summary.backgrounds += not classes
            summary.boxes += len(classes)
            for cls in classes:
                counts[cls] += 1
        if folder.is_dir():
            label_dir = label_path(folder / "x").parent
            if label_dir != folder and label_dir.is_dir():
                summary.labels_without_image += sorted(set(label_dir.rglob("*.txt")) - seen)
    summary.per_class = dict(zip(names, counts, strict=True))
    for cache in sorted(caches):
        check_label_cache(cache)
    return summary


# numpy's pickle of Ultralytics' label cache (a dict of lists, strings and arrays) imports only these
CACHE_GLOBALS = frozenset(
    f"numpy.{core}.{name}"
    for core in ("core.multiarray", "_core.multiarray")
    for name in ("_reconstruct", "scalar")
) | {"numpy.ndarray", "numpy.dtype"}


def check_label_cache(path: Path) -> None:
    """Refuse an Ultralytics label cache (``labels/<split>.cache``, which Ultralytics reads with
    ``np.load``, pickles allowed) whose pickle imports anything but numpy's array rebuilders.

    The file is read, never unpickled: the ``.npy`` header by hand, the pickle by
    :func:`distill.safe_load.pickle_globals`. A missing cache is fine (Ultralytics writes one).
    """
    import ast

    fix = f"delete {path} (Ultralytics rebuilds it from the label files)"
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
            if magic.startswith(b"PK"):
                return  # an .npz archive: Ultralytics' .item() fails on it before reading a member
            if magic[:6] == b"\x93NUMPY":
                size = int.from_bytes(f.read(2 if magic[6] == 1 else 4), "little")
                header = ast.literal_eval(f.read(size).decode("latin1"))
                if "O" not in str(header.get("descr", "")):
                    return  # plain numbers: no pickle in the file
            else:
                f.seek(0)  # np.load with pickles allowed unpickles any other file as a whole
            imports = pickle_globals(f)
    except FileNotFoundError:
        return
    except (OSError, ValueError, SyntaxError, AttributeError, IndexError) as err:
        raise DistillError(f"label cache {path} is unreadable ({err}); {fix}") from None
    unsafe = None if imports is None else sorted(imports - CACHE_GLOBALS)
    if unsafe is None or unsafe:
        what = ", ".join(unsafe) if unsafe else "globals built at load time"
        raise DistillError(
            f"label cache {path}: the file needs arbitrary unpickling, which can run code ({what}), "
            f"so distill refuses it; {fix}"
        )
