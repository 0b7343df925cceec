"""Fashion-MNIST (Zalando Research, MIT licence): 28x28 grayscale clothing images, 10 classes.

An explicit ``root`` is used as given: a folder holding the four files, else an error naming it (a
missing, empty or unrelated folder, a file, a symlink loop) - never silently another copy. Without one the
look-up order is ``$DISTILL_DATA/fashion-mnist`` (default ``./data/fashion-mnist``), the Debian package
folder (``apt-get install dataset-fashion-mnist``), then a download into the first.

``python -m distill.data.fashion_mnist --ensure [--root DIR]`` finds or downloads the files (into a
missing or empty ``DIR`` when given) and prints the folder used.
"""

from __future__ import annotations

import argparse
import errno
import functools
import gzip
import hashlib
import os
import stat
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

from distill.data import DATASETS
from distill.data.tensor import TensorDataset, check_split
from distill.errors import DistillError
from distill.io import download

MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)
DEFAULT_ROOT = Path("data/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SIZES = {"train": 60000, "test": 10000}
CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
DOWNLOAD_TIMEOUT_S = 30.0
# SHA-256 of each file's decompressed IDX bytes: the mirror's .gz and Debian's re-gzipped copies differ in
# their gzip framing, not in the data, so a download is checked after decompression.
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

# IDX type byte -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _all_names() -> list[str]:
    return [f"{name}.gz" for pair in FILES.values() for name in pair]


def _how_to_get(root: Path) -> str:
    return (
        "install it with `sudo apt-get install dataset-fashion-mnist`, or download "
        f"{', '.join(_all_names())} from {MIRROR} into {root}"
    )


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an IDX file (optionally gzipped); the result is cached per process and read-only."""
    path = Path(path)
    stat = path.stat()
    return _read_idx_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    fix = "delete it and fetch it again"
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DistillError(f"cannot read IDX file {path} ({exc}); {fix}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DistillError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}); {fix}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DistillError(f"IDX file {path} is truncated (header cut short); {fix}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "too long"
        raise DistillError(
            f"IDX file {path} is {state} ({len(raw)} bytes, header {dims} needs {expected}); {fix}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    arr = arr.astype(dtype.newbyteorder("="), copy=False)
    arr.flags.writeable = False
    return arr


def _file_in(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _complete(folder: Path) -> bool:
    return all(_file_in(folder, name) for pair in FILES.values() for name in pair)


def _user_root(root: str | os.PathLike[str] | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("DISTILL_DATA"):
        return Path(os.environ["DISTILL_DATA"]).expanduser() / "fashion-mnist"
    return DEFAULT_ROOT


def _root_problem(folder: Path) -> str | None:
    """What keeps ``folder`` from being a Fashion-MNIST folder ("does not exist", ...), or None."""
    try:
        mode = folder.stat().st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symlink loop"
        if folder.is_symlink():
            return f"is a symlink to a missing path ({os.readlink(folder)})"
        return "does not exist" if err.errno == errno.ENOENT else f"cannot be read ({err.strerror})"
    if not stat.S_ISDIR(mode):
        return "is a file, not a folder"
    missing = [f"{n}.gz" for pair in FILES.values() for n in pair if _file_in(folder, n) is None]
    if not missing:
        return None
    try:
        present = sorted(p.name for p in folder.iterdir())
    except OSError as err:
        return f"cannot be listed ({err.strerror})"
    if not present:
        return "is empty"
    shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
    return f"lacks {', '.join(missing)} (it holds {shown})"


def _explicit_root(root: str | os.PathLike[str]) -> Path:
    """``root`` as given, when it holds the four files; otherwise an error naming it and the fix."""
    folder = Path(root).expanduser()
    problem = _root_problem(folder)
    if problem is not None:
        raise DistillError(
            f"Fashion-MNIST root {folder} {problem}; put the four files there (`python -m "
            f"distill.data.fashion_mnist --ensure --root {folder}` downloads them) or leave root unset to "
            f"use $DISTILL_DATA/fashion-mnist, {', '.join(map(str, SYSTEM_DIRS))} or a download"
        )
    return folder


def find_fashion_mnist(root: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder holding all four files: ``root`` itself when given, else the first of
    $DISTILL_DATA/fashion-mnist (or ./data/fashion-mnist) and Debian's."""
    if root is not None:
        folder = Path(root).expanduser()
        return folder if _root_problem(folder) is None else None
    for folder in (_user_root(None), *SYSTEM_DIRS):
        if _complete(folder):
            return folder
    return None


def _download(url: str, dest: Path) -> None:
    download(url, dest, DOWNLOAD_TIMEOUT_S)


def idx_sha256(path: Path) -> str:
    """SHA-256 of the IDX bytes in ``path`` (decompressed when it ends in ``.gz``)."""
    digest = hashlib.sha256()
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise DistillError(f"cannot read {path} ({exc}); delete it and fetch it again") from None
    return digest.hexdigest()


def check_digest(path: Path) -> None:
    """Refuse a Fashion-MNIST file whose data is not the published one (its SHA-256 is pinned)."""
    expected = SHA256[path.name.removesuffix(".gz")]
    found = idx_sha256(path)
    if found != expected:
        raise DistillError(
            f"{path} has SHA-256 {found}, not the published {expected}; the download is corrupt or "
            f"not Fashion-MNIST: delete it and fetch it again, or {_how_to_get(path.parent)}"
        )


def download_fashion_mnist(target: Path) -> Path:
    """Download the files ``target`` lacks into it (created if needed), each checked against its pinned
    SHA-256 (a mismatch is deleted and refused); returns ``target``."""
    for name in _all_names():
        if _file_in(target, name.removesuffix(".gz")) is not None:
            continue
        try:
            _download(MIRROR + name, target / name)
        except Exception as exc:  # network errors come in many types (URLError, timeout, HTTP...)
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise DistillError(
                f"could not download {MIRROR + name} ({reason}); {_how_to_get(target)}"
            ) from None
        try:
            check_digest(target / name)
        except DistillError:
            (target / name).unlink()
            raise
    return target


def ensure_fashion_mnist(root: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """The Fashion-MNIST folder: an explicit ``root`` as given (an error when it lacks the files), else
    the look-up order of the module docstring, downloading when ``download``."""
    if root is not None:
        return _explicit_root(root)
    found = find_fashion_mnist()
    if found is not None:
        return found
    target = _user_root(None)
    if not download:
        raise DistillError(
            f"Fashion-MNIST not found in {target} or {', '.join(map(str, SYSTEM_DIRS))}; {_how_to_get(target)}"
        )
    return download_fashion_mnist(target)


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N,28,28] and labels [N] of one split from ``folder``, shape-checked."""
    names = FILES[check_split(split)]
    paths = [_file_in(folder, name) for name in names]
    if None in paths:
        raise DistillError(
            f"Fashion-MNIST {split} files are missing from {folder}; {_how_to_get(folder)}"
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise DistillError(
            f"{paths[0]} / {paths[1]} have shapes {images.shape} / {labels.shape}, not [N,28,28] / [N]; "
            "delete them and fetch them again"
        )
    return images, labels


def FashionMNIST(
    split: str = "train", root: str | None = None, download: bool = True
) -> TensorDataset:
    """Fashion-MNIST as a TensorDataset: images float32 [N,1,28,28] in [0, 1], 10 classes."""
    folder = ensure_fashion_mnist(root, download=download)
    images, labels = load_split(folder, split)
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # uint8; TensorDataset scales by 1/255
    y = torch.from_numpy(labels.astype(np.int64))
    return TensorDataset(
        x, y, num_classes=len(CLASSES), classes=CLASSES, name=f"fashion_mnist/{split}"
    )


if __name__ != "__main__":  # `python -m` executes this file a second time, as __main__
    DATASETS.add(
        "fashion_mnist", FashionMNIST, source="Zalando Research", license="MIT", sizes=SIZES
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distill.data.fashion_mnist", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--ensure", action="store_true", help="find or download the files, print the folder"
    )
    parser.add_argument(
        "--root",
        default=None,
        help="folder to look in (--ensure: downloads into it when missing or empty)",
    )
    args = parser.parse_args(argv)
    if not args.ensure:
        folder = find_fashion_mnist(args.root)
        print(folder if folder is not None else "not found")
        return 0 if folder is not None else 1
    try:
        problem = _root_problem(Path(args.root).expanduser()) if args.root is not None else None
        if problem is not None and problem.startswith(("does not exist", "is empty", "lacks")):
            # a folder named for --ensure: download (the rest of) the files there
            print(download_fashion_mnist(Path(args.root).expanduser()))
        else:
            print(ensure_fashion_mnist(args.root))
    except DistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
