"""An explicit dataset root is used as given: when it is wrong (missing, a file, unrelated files, a symlink
loop) the error names it and the fix; another copy (Debian's, $DISTILL_DATA, a download) is never put in
its place. The look-up order applies only when no root is given."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from distill.data import build_dataset
from distill.data import fashion_mnist as fm
from distill.errors import DistillError


def write_fashion_mnist(root: Path, n: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        images_name, labels_name = fm.FILES[split]
        for name, array in ((images_name, np.zeros((n, 28, 28))), (labels_name, np.arange(n))):
            header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            (root / f"{name}.gz").write_bytes(
                gzip.compress(header + array.astype(np.uint8).tobytes())
            )
    return root


@pytest.fixture
def system_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A complete 'system' copy (5 images per split) and one in $DISTILL_DATA: neither may stand in."""
    system = write_fashion_mnist(tmp_path / "system", n=5)
    monkeypatch.setattr(fm, "SYSTEM_DIRS", (system,))
    write_fashion_mnist(tmp_path / "env" / "fashion-mnist", n=4)
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "env"))

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("downloaded")

    monkeypatch.setattr(fm, "_download", no_download)
    return system


def _loop(root: Path) -> None:
    os.symlink(root.parent / "b", root.parent / "a")
    os.symlink(root.parent / "a", root)
    os.symlink(root, root.parent / "b")


WRONG: dict[str, tuple[Callable[[Path], object], str]] = {
    "missing": (lambda root: None, "does not exist"),
    "empty": (lambda root: root.mkdir(), "is empty"),
    "file": (lambda root: root.write_text("not a folder"), "is a file, not a folder"),
    "other-files": (
        lambda root: [root.mkdir(), (root / "cifar.tar").write_bytes(b"x")],
        "lacks train-images-idx3-ubyte.gz",
    ),
    "symlink-loop": (_loop, "is a symlink loop"),
    "dangling-symlink": (
        lambda root: os.symlink(root.parent / "gone", root),
        "is a symlink to a missing path",
    ),
}


@pytest.mark.parametrize("kind", list(WRONG))
@pytest.mark.parametrize("download", [True, False])
def test_wrong_explicit_root_is_an_error_naming_it(
    tmp_path: Path, system_copy: Path, kind: str, download: bool
) -> None:
    make, problem = WRONG[kind]
    root = tmp_path / "root"
    make(root)
    with pytest.raises(DistillError) as info:
        build_dataset("fashion_mnist", split="test", root=str(root), download=download)
    message = str(info.value)
    assert message.startswith(f"Fashion-MNIST root {root} {problem}") and "\n" not in message
    assert f"--ensure --root {root}" in message and "leave root unset" in message
    assert fm.find_fashion_mnist(root) is None


def test_right_explicit_root_is_used_and_no_root_searches(
    tmp_path: Path, system_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_fashion_mnist(tmp_path / "mine", n=2)
    assert len(build_dataset("fashion_mnist", split="test", root=str(root))) == 2
    assert len(build_dataset("fashion_mnist", split="test")) == 4  # $DISTILL_DATA/fashion-mnist
    monkeypatch.delenv("DISTILL_DATA")
    monkeypatch.chdir(tmp_path)
    assert fm.find_fashion_mnist() == system_copy  # ./data/fashion-mnist is absent: the system copy
