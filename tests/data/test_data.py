"""Tests for distill.data: in-memory datasets, IDX / folder / safetensors loading, augmentation."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from distill.data import DATASETS, BatchAugment, TensorDataset, build_dataset, image_folder
from distill.data import fashion_mnist as fm
from distill.errors import DistillError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def make_ds(n: int = 10, classes: int = 3) -> TensorDataset:
    images = torch.arange(n * 2 * 4 * 4, dtype=torch.float32).reshape(n, 2, 4, 4) / (n * 32)
    return TensorDataset(images, torch.arange(n) % classes)


# --- TensorDataset -------------------------------------------------------------------------


def test_tensor_dataset_attributes_and_item() -> None:
    ds = make_ds()
    assert (len(ds), ds.num_classes, ds.in_channels, ds.image_size) == (10, 3, 2, (4, 4))
    assert ds.classes == ["0", "1", "2"]
    item = ds[4]
    assert item["image"].shape == (2, 4, 4)
    assert item["label"].dtype == torch.int64 and int(item["label"]) == 1
    assert int(item["index"]) == 4


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long), "empty"),
        (torch.zeros(3, 1, 2, 2), torch.tensor([0, 5, 1]), "label 5 .*3 classes"),
        (torch.zeros(3, 1, 2, 2), torch.tensor([0, -1, 1]), "label -1"),
        (torch.zeros(3, 2, 2), torch.tensor([0, 1, 1]), "4-D"),
        (torch.zeros(3, 1, 2, 2), torch.tensor([0, 1]), "length 3"),
    ],
)
def test_tensor_dataset_validation(images: torch.Tensor, labels: torch.Tensor, match: str) -> None:
    kwargs = {"num_classes": 3} if "classes" in match else {}
    with pytest.raises(DistillError, match=match) as info:
        TensorDataset(images, labels, **kwargs)
    assert "\n" not in str(info.value)


def test_uint8_images_are_scaled() -> None:
    ds = TensorDataset(torch.full((2, 1, 2, 2), 255, dtype=torch.uint8), torch.tensor([0, 1]))
    assert ds.images.dtype == torch.float32 and float(ds.images.max()) == 1.0


def test_loader_yields_batched_dicts() -> None:
    ds = make_ds(10)
    batches = list(ds.loader(4))
    assert [len(b["index"]) for b in batches] == [4, 4, 2]
    first = batches[0]
    assert first["image"].shape == (4, 2, 4, 4) and first["label"].dtype == torch.int64
    assert first["index"].tolist() == [0, 1, 2, 3]
    assert torch.equal(first["image"], ds.images[:4])
    assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(10))


def test_loader_shuffle_is_seeded_and_indices_match() -> None:
    ds = make_ds(10)

    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        batches = list(ds.loader(3, shuffle=True, drop_last=True, generator=gen))
        for b in batches:
            assert torch.equal(b["image"], ds.images[b["index"]])
            assert torch.equal(b["label"], ds.labels[b["index"]])
        return torch.cat([b["index"] for b in batches]).tolist()

    assert order(1) == order(1) and len(order(1)) == 9
    assert order(1) != order(2)


def test_plain_dataloader_default_collate_still_works() -> None:
    batch = next(iter(DataLoader(make_ds(), batch_size=4)))
    assert batch["image"].shape == (4, 2, 4, 4) and batch["index"].tolist() == [0, 1, 2, 3]


def test_subset_is_seeded_and_balanced() -> None:
    ds = make_ds(30, classes=3)
    sub = ds.subset(9, seed=0)
    assert len(sub) == 9 and sub.num_classes == 3
    assert torch.bincount(sub.labels).tolist() == [3, 3, 3]
    assert torch.equal(sub.images, ds.subset(9, seed=0).images)
    with pytest.raises(DistillError, match="subset size 31"):
        ds.subset(31)
    with pytest.raises(DistillError, match="subset size 0"):
        ds.subset(0)


# --- build_dataset ---------------------------------------------------------------------------


def test_registry_and_build_dataset_errors() -> None:
    assert {"fashion_mnist", "image_folder", "tensors"} <= set(DATASETS.names())
    with pytest.raises(DistillError, match="fashion_mnist"):
        build_dataset("fashion-mnist")
    with pytest.raises(DistillError, match="'image_sise'.*image_size"):
        build_dataset("image_folder", root="x", image_sise=3)
    with pytest.raises(DistillError, match="'val'"):
        build_dataset("image_folder", split="val", root="x")


# --- IDX / Fashion-MNIST ---------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, truncate: int = 0) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(data[: len(data) - truncate])


def test_read_idx_roundtrip_and_truncated(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "ok-idx3-ubyte.gz", array)
    out = fm.read_idx(tmp_path / "ok-idx3-ubyte.gz")
    assert out.shape == (2, 3, 4) and np.array_equal(out, array)
    write_idx(tmp_path / "bad-idx3-ubyte.gz", array, truncate=5)
    with pytest.raises(DistillError, match="bad-idx3-ubyte.gz is truncated.*delete"):
        fm.read_idx(tmp_path / "bad-idx3-ubyte.gz")
    (tmp_path / "junk").write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(DistillError, match="not an IDX file"):
        fm.read_idx(tmp_path / "junk")


def test_fashion_mnist_from_tiny_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        images_name, labels_name = fm.FILES[split]
        write_idx(tmp_path / f"{images_name}.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / labels_name, np.arange(n) % 10)  # un-gzipped name, gzip content
        (tmp_path / labels_name).rename(tmp_path / f"{labels_name}.gz")
    assert fm.find_fashion_mnist(tmp_path) == tmp_path
    ds = build_dataset("fashion_mnist", split="test", root=str(tmp_path), download=False)
    assert len(ds) == 4 and ds.images.shape == (4, 1, 28, 28) and ds.num_classes == 10
    assert (
        ds.classes[0] == "T-shirt/top"
        and 0.0 <= float(ds.images.min()) <= float(ds.images.max()) <= 1.0
    )


@pytest.mark.skipif(
    not (DEBIAN / "t10k-labels-idx1-ubyte.gz").exists(), reason="needs dataset-fashion-mnist"
)
def test_fashion_mnist_from_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "DISTILL_DATA", str(tmp_path / "empty")
    )  # no root: $DISTILL_DATA, then Debian's
    test = build_dataset("fashion_mnist", split="test", download=False)
    train = build_dataset("fashion_mnist", split="train", download=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert test.images.shape[1:] == (1, 28, 28) and test.images.dtype == torch.float32
    assert float(test.images.min()) == 0.0 and float(test.images.max()) == 1.0
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_fashion_mnist_download_failure_says_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())
    monkeypatch.setattr(urllib.request, "urlopen", fail)
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path))
    with pytest.raises(DistillError, match="apt-get install dataset-fashion-mnist") as info:
        build_dataset("fashion_mnist")
    assert str(tmp_path / "fashion-mnist") in str(info.value) and "\n" not in str(info.value)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # no partial files left behind
    with pytest.raises(DistillError, match="apt-get"):
        fm.FashionMNIST(download=False)


def test_fashion_mnist_download_is_atomic_and_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = {"train": 3, "test": 2}
    blobs = {}
    for split, (images_name, labels_name) in fm.FILES.items():
        write_idx(tmp_path / "src.gz", np.zeros((sizes[split], 28, 28)))
        blobs[f"{images_name}.gz"] = (tmp_path / "src.gz").read_bytes()
        write_idx(tmp_path / "src.gz", np.arange(sizes[split]))
        blobs[f"{labels_name}.gz"] = (tmp_path / "src.gz").read_bytes()
    urls = []

    def fake_urlopen(url: str, timeout: float) -> io.BytesIO:
        urls.append(url)
        return io.BytesIO(blobs[url.rsplit("/", 1)[1]])

    pinned = {
        n.removesuffix(".gz"): hashlib.sha256(gzip.decompress(b)).hexdigest()
        for n, b in blobs.items()
    }
    monkeypatch.setattr(
        fm, "SHA256", pinned
    )  # these small stand-ins are the "published" files here
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "data"))
    root = tmp_path / "data" / "fashion-mnist"
    ds = fm.FashionMNIST(split="test")
    assert len(ds) == 2 and len(urls) == 4 and all(u.startswith(fm.MIRROR) for u in urls)
    assert sorted(p.name for p in root.iterdir()) == sorted(blobs)  # no temp files left
    assert fm.ensure_fashion_mnist(root) == root and len(urls) == 4  # nothing fetched again
    assert fm.ensure_fashion_mnist() == root and len(urls) == 4
    # --ensure --root DIR downloads into a folder named for it (the only download into a given root)
    assert fm.main(["--ensure", "--root", str(tmp_path / "named")]) == 0 and len(urls) == 8
    assert sorted(p.name for p in (tmp_path / "named").iterdir()) == sorted(blobs)


def test_fashion_mnist_download_with_a_wrong_digest_is_refused_and_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_idx(tmp_path / "src.gz", np.zeros((2, 28, 28)))
    blob = (tmp_path / "src.gz").read_bytes()  # a valid IDX file, but not Fashion-MNIST's data
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(blob))
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "data"))
    with pytest.raises(DistillError, match="not the published") as info:
        fm.FashionMNIST(split="test")
    assert "\n" not in str(info.value) and fm.SHA256["train-images-idx3-ubyte"] in str(info.value)
    assert not any(p.is_file() for p in (tmp_path / "data").rglob("*"))  # the bad file is gone
    assert fm.main(["--ensure"]) == 2


@pytest.mark.skipif(
    not (DEBIAN / "t10k-labels-idx1-ubyte.gz").exists(), reason="needs dataset-fashion-mnist"
)
def test_pinned_fashion_mnist_digests_match_the_debian_copy() -> None:
    for name, digest in fm.SHA256.items():
        assert fm.idx_sha256(DEBIAN / f"{name}.gz") == digest, name


# --- image_folder / tensors -------------------------------------------------------------------


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for name, colour in colours.items():
        for k in range(2):
            (tmp_path / "train" / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (10, 6), colour).save(tmp_path / "train" / name / f"{k}.png")
    ds = image_folder(root=str(tmp_path), image_size=8)
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.images.shape == (4, 3, 8, 8) and ds.image_size == (8, 8)
    assert float(ds.images[0, 0].min()) == 1.0 and float(ds.images[3, 2].min()) == 1.0
    gray = build_dataset("image_folder", root=str(tmp_path), image_size=(4, 6), grayscale=True)
    assert gray.images.shape == (4, 1, 4, 6)
    with pytest.raises(DistillError, match=r"test does not exist.*<class>"):
        image_folder(split="test", root=str(tmp_path))
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DistillError, match="no images found"):
        image_folder(root=str(tmp_path / "empty"))


def test_tensor_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file(
        {"images": torch.zeros(3, 5, 5, dtype=torch.uint8), "labels": torch.tensor([0, 1, 0])},
        str(tmp_path / "train.safetensors"),
    )
    save_file(
        {"images": torch.zeros(2, 1, 5, 5), "labels": torch.tensor([2, 0])},
        str(tmp_path / "test.safetensors"),
    )
    train = build_dataset("tensors", root=str(tmp_path))
    assert train.images.shape == (3, 1, 5, 5)
    assert train.num_classes == 3  # agrees with the test split's labels
    save_file({"images": torch.zeros(2, 1, 5, 5)}, str(tmp_path / "test.safetensors"))
    with pytest.raises(DistillError, match="lacks tensor.*labels"):
        build_dataset("tensors", split="test", root=str(tmp_path))


# --- BatchAugment ------------------------------------------------------------------------------


def test_augment_is_deterministic_and_keeps_shape() -> None:
    images = torch.rand(16, 3, 8, 8)
    aug = BatchAugment(crop_padding=2, flip=True)
    a = aug(images, torch.Generator().manual_seed(3))
    b = aug(images, torch.Generator().manual_seed(3))
    assert a.shape == images.shape and torch.equal(a, b)
    assert not torch.equal(a, aug(images, torch.Generator().manual_seed(4)))
    assert aug.enabled and not BatchAugment().enabled
    assert torch.equal(BatchAugment()(images, torch.Generator()), images)


def test_flip_gives_input_or_mirror() -> None:
    images = torch.rand(64, 1, 4, 5)
    out = BatchAugment(flip=True)(images, torch.Generator().manual_seed(0))
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 0 < int(mirrored.sum()) < 64  # both outcomes occur


def test_padded_crop_is_shifted_copy() -> None:
    pad, size = 2, 6
    images = torch.arange(1, 1 + 32 * 2 * size * size, dtype=torch.float32).reshape(
        32, 2, size, size
    )
    out = BatchAugment(crop_padding=pad)(images, torch.Generator().manual_seed(0))
    shifts = set()
    for b in range(len(images)):
        # pixel values are unique: the centre pixel (always inside the image) gives the shift
        where = (images[b, 0] == out[b, 0, 3, 3]).nonzero()[0]
        dy, dx = int(where[0]) - 3, int(where[1]) - 3
        assert max(abs(dy), abs(dx)) <= pad
        padded = torch.nn.functional.pad(images[b], (pad, pad, pad, pad))
        expected = padded[:, pad + dy : pad + dy + size, pad + dx : pad + dx + size]
        assert torch.equal(out[b], expected)
        shifts.add((dy, dx))
    assert len(shifts) > 3


def test_augment_config_and_errors() -> None:
    assert BatchAugment.from_config(None).enabled is False
    assert BatchAugment.from_config({"crop_padding": 4, "flip": True}).crop_padding == 4
    with pytest.raises(DistillError, match="crop_padding.*-1"):
        BatchAugment(crop_padding=-1)
    with pytest.raises(DistillError, match="'flp'.*flip"):
        BatchAugment.from_config({"flp": True})
