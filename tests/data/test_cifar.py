"""CIFAR-10/100 read from the official binary layout (label byte(s) + 3072 bytes of R, G, B planes),
on a few records written here; the download is checked against its MD5 and extracts only its files."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data import build_dataset, cifar
from distill.errors import DistillError


def _records(n: int, label_bytes: int, seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(0, 20, n), rng.integers(0, 100, n)], 1)[:, -label_bytes:]
    if label_bytes == 1:
        labels = labels % 10
    images = rng.integers(0, 256, (n, 3, 32, 32))
    raw = np.concatenate([labels, images.reshape(n, -1)], 1).astype(np.uint8).tobytes()
    return raw, images, labels


def test_cifar10_reads_the_binary_records(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    expected = []
    for i in range(1, 6):
        raw, images, labels = _records(2, 1, seed=i)
        (folder / f"data_batch_{i}.bin").write_bytes(raw)
        expected.append((images, labels))
    (folder / "test_batch.bin").write_bytes(_records(3, 1, seed=9)[0])
    train = build_dataset("cifar10", "train", str(tmp_path))  # the archive's folder inside root
    assert len(train) == 10 and train.images.shape == (10, 3, 32, 32)
    images = np.concatenate([e[0] for e in expected])
    assert torch.equal(train.images, torch.from_numpy(images).float() / 255)
    assert train.labels.tolist() == np.concatenate([e[1][:, 0] for e in expected]).tolist()
    assert train.classes[0] == "airplane" and train.num_classes == 10
    test = cifar.cifar10("test", root=str(folder))
    assert len(test) == 3
    (folder / "test_batch.bin").write_bytes(_records(3, 1)[0][:-5])
    with pytest.raises(DistillError, match=r"not a whole number of 3073-byte cifar10 records"):
        cifar.cifar10("test", root=str(folder))
    with pytest.raises(DistillError, match=r"cifar10 root .* holds no test_batch.bin"):
        cifar.cifar10("test", root=str(tmp_path / "nowhere"))


def test_cifar100_fine_and_coarse_labels(tmp_path: Path) -> None:
    raw, images, labels = _records(4, 2)
    for split in ("train", "test"):
        (tmp_path / f"{split}.bin").write_bytes(raw)
    (tmp_path / "fine_label_names.txt").write_text("".join(f"f{i}\n" for i in range(100)))
    fine = cifar.cifar100("train", root=str(tmp_path))
    coarse = cifar.cifar100("test", root=str(tmp_path), labels="coarse")
    assert fine.labels.tolist() == labels[:, 1].tolist() and fine.num_classes == 100
    assert fine.classes[7] == "f7" and coarse.classes[3] == "3"
    assert coarse.labels.tolist() == labels[:, 0].tolist() and coarse.num_classes == 20
    assert torch.equal(coarse.images, torch.from_numpy(images).float() / 255)
    with pytest.raises(DistillError, match="labels must be 'fine' or 'coarse'"):
        cifar.cifar100(root=str(tmp_path), labels="both")


def _archive(path: Path, folder: str, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_the_download_is_checked_and_extracted(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path))
    raw = _records(2, 1)[0]
    files = {f"data_batch_{i}.bin": raw for i in range(1, 6)}
    files |= {"test_batch.bin": raw, "batches.meta.txt": b"a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n"}
    archive = tmp_path / "src.tar.gz"
    _archive(archive, "cifar-10-batches-bin", {**files, "../evil.bin": b"x"})
    fetched = []

    def urlopen(url, timeout):
        fetched.append(url)
        return open(archive, "rb")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(DistillError, match=r"has MD5 [0-9a-f]{32}, not the published"):
        cifar.cifar10("test")
    assert fetched == [cifar.CIFAR10.url]
    (tmp_path / "cifar10" / "cifar-10-binary.tar.gz").unlink()
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(cifar, "CIFAR10", cifar.Variant(**{**cifar.CIFAR10.__dict__, "md5": md5}))
    data = cifar.cifar10("test")
    assert len(data) == 2 and data.classes[:3] == ["a", "b", "c"]
    assert not (tmp_path / "cifar10" / "evil.bin").exists() and not (tmp_path / "evil.bin").exists()
    assert cifar.cifar10("train") and len(fetched) == 2  # extracted once, read from then on
    with pytest.raises(DistillError, match=r"cifar100 not found in .*set download: true"):
        cifar.cifar100(download=False)
