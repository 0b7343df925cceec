"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the official *binary* version: 32x32 RGB images.

distill reads the binary archives (``cifar-10-binary.tar.gz``, ``cifar-100-binary.tar.gz``), never the
"python version": that one is pickles, and unpickling a file runs code. Each record of the binary files
is a label byte (CIFAR-100: coarse then fine label) followed by 3072 bytes, the red, green and blue
planes of the image row by row.

``root`` is the folder holding the extracted ``.bin`` files (or the archive's folder,
``cifar-10-batches-bin`` / ``cifar-100-binary``, inside it). Without one, ``$DISTILL_DATA/cifar10`` (or
``cifar100``; default ``./data/...``) is used, and the archive is downloaded there, checked against its
published MD5 and extracted (only the expected member names; nothing else is written).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.data import DATASETS
from distill.data.tensor import TensorDataset, check_split
from distill.errors import DistillError
from distill.io import download

DOWNLOAD_TIMEOUT_S = 30.0
IMAGE_BYTES = 3 * 32 * 32
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """One CIFAR archive: where it comes from, its folder and files, and its record layout."""

    name: str
    url: str
    md5: str
    folder: str  # the archive's top folder
    files: dict[str, tuple[str, ...]]  # split -> .bin files
    label_bytes: int  # bytes before the image in each record
    names_files: tuple[str, ...]  # class-name files (one name a line), one per label byte
    num_classes: tuple[int, ...]  # per label byte

    @property
    def record(self) -> int:
        return self.label_bytes + IMAGE_BYTES

    def members(self) -> list[str]:
        return [*(f for split in self.files.values() for f in split), *self.names_files]


CIFAR10 = Variant(
    "cifar10",
    "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "c32a1d4ab5d03f1284b67883e8d87530",
    "cifar-10-batches-bin",
    {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
    1,
    ("batches.meta.txt",),
    (10,),
)
CIFAR100 = Variant(
    "cifar100",
    "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    "03b5dce01913d631647c71ecec9e9cb8",
    "cifar-100-binary",
    {"train": ("train.bin",), "test": ("test.bin",)},
    2,
    ("coarse_label_names.txt", "fine_label_names.txt"),
    (20, 100),
)


def _has_bins(folder: Path, variant: Variant) -> bool:
    return all((folder / f).is_file() for split in variant.files.values() for f in split)


def _folder(root: str | None, variant: Variant, download: bool) -> Path:
    """The folder with ``variant``'s .bin files: under an explicit ``root`` (an error when absent),
    else under the default folder, downloaded there when missing and ``download``."""
    how = f"download {variant.url} and extract it there"
    if root is not None:
        base = Path(root).expanduser()
        for folder in (base, base / variant.folder):
            if _has_bins(folder, variant):
                return folder
        raise DistillError(
            f"{variant.name} root {base} holds no {', '.join(variant.files['test'])} (or "
            f"{variant.folder}/); {how}, or leave root unset to download it"
        )
    base = Path(os.environ.get("DISTILL_DATA") or "data").expanduser() / variant.name
    folder = base / variant.folder
    if _has_bins(folder, variant):
        return folder
    if not download:
        raise DistillError(f"{variant.name} not found in {folder}; {how}, or set download: true")
    fetch(variant, base)
    return folder


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(variant: Variant, base: Path) -> None:
    """Download ``variant``'s archive into ``base``, check its MD5 and extract its expected files to
    ``base / variant.folder`` (each written under its own name: an archive cannot place files elsewhere)."""
    base.mkdir(parents=True, exist_ok=True)
    archive = base / variant.url.rsplit("/", 1)[1]
    if not archive.is_file():
        try:
            download(variant.url, archive, DOWNLOAD_TIMEOUT_S)
        except Exception as exc:  # network errors come in many types (URLError, timeout, HTTP...)
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise DistillError(
                f"could not download {variant.url} ({reason}); download it into {base} yourself"
            ) from None
    got = _md5(archive)
    if got != variant.md5:
        raise DistillError(
            f"{archive} has MD5 {got}, not the published {variant.md5} (a broken or different "
            f"download); delete it and run again"
        )
    out_dir = base / variant.folder
    out_dir.mkdir(exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in variant.members():
                member = tar.extractfile(f"{variant.folder}/{name}")
                if member is None:
                    raise KeyError(name)
                (out_dir / name).write_bytes(member.read())
    except (KeyError, OSError, tarfile.TarError) as exc:
        raise DistillError(
            f"cannot extract {exc} from {archive}; delete it and run again"
        ) from None


def read_records(paths: list[Path], variant: Variant) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N,3,32,32] and the label bytes [N, label_bytes] of ``paths``, size-checked."""
    chunks = []
    for path in paths:
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % variant.record:
            raise DistillError(
                f"{path} has {raw.size} bytes, not a whole number of {variant.record}-byte "
                f"{variant.name} records; delete it and fetch the binary version again"
            )
        chunks.append(raw.reshape(-1, variant.record))
    records = np.concatenate(chunks)
    images = records[:, variant.label_bytes :].reshape(-1, 3, 32, 32)
    return images, records[:, : variant.label_bytes]


def _class_names(folder: Path, name_file: str, count: int) -> list[str]:
    """The names in ``name_file`` (one a line), else CIFAR-10's or the class numbers."""
    path = folder / name_file
    names = [line.strip() for line in path.read_text().splitlines()] if path.is_file() else []
    names = [n for n in names if n]
    if len(names) == count:
        return names
    return CIFAR10_CLASSES if count == 10 else [str(i) for i in range(count)]


def _dataset(
    variant: Variant, split: str, root: str | None, download: bool, which: int
) -> TensorDataset:
    folder = _folder(root, variant, download)
    images, labels = read_records([folder / f for f in variant.files[check_split(split)]], variant)
    count = variant.num_classes[which]
    classes = _class_names(folder, variant.names_files[which], count)
    return TensorDataset(
        torch.from_numpy(images.copy()),
        torch.from_numpy(labels[:, which].astype(np.int64)),
        num_classes=count,
        classes=classes,
        name=f"{variant.name}/{split}",
    )


@DATASETS.register(
    "cifar10",
    source="Krizhevsky 2009",
    sizes={"train": 50000, "test": 10000},
    description="CIFAR-10 from the official binary version (downloaded, MD5-checked)",
)
def cifar10(split: str = "train", root: str | None = None, download: bool = True) -> TensorDataset:
    """CIFAR-10 from the binary version: images float32 [N,3,32,32] in [0, 1], 10 classes."""
    return _dataset(CIFAR10, split, root, download, 0)


@DATASETS.register(
    "cifar100",
    source="Krizhevsky 2009",
    sizes={"train": 50000, "test": 10000},
    description="CIFAR-100 (fine or coarse labels) from the official binary version",
)
def cifar100(
    split: str = "train", root: str | None = None, download: bool = True, labels: str = "fine"
) -> TensorDataset:
    """CIFAR-100 from the binary version: 100 fine classes, or the 20 superclasses (labels: coarse)."""
    if labels not in ("fine", "coarse"):
        raise DistillError(f"cifar100 labels must be 'fine' or 'coarse', got {labels!r}; use fine")
    return _dataset(CIFAR100, split, root, download, 1 if labels == "fine" else 0)
