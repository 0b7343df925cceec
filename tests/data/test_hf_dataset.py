"""``hf_dataset`` on a ``DatasetDict`` saved with ``save_to_disk`` (no hub): texts, and images decoded
per item by the loader's workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data import build_dataset
from distill.data.base import LoaderOptions
from distill.data.folder import HFImageDataset
from distill.data.text import TextDataset
from distill.errors import DistillError

datasets = pytest.importorskip("datasets")


def _images(folder: Path) -> list[np.ndarray]:
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(6)]
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])}
    )
    rows = {"img": [Image.fromarray(a) for a in arrays], "label": [0, 1, 1, 0, 1, 0]}
    part = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": part, "test": part.select([0, 1])}).save_to_disk(str(folder))
    return arrays


def test_images_from_a_saved_dataset(tmp_path: Path) -> None:
    from PIL import Image

    arrays = _images(tmp_path / "saved")
    data = build_dataset("hf_dataset", "train", path=str(tmp_path / "saved"), image_size=(4, 3))
    assert isinstance(data, HFImageDataset) and data.column == "img"  # found by its feature
    assert (len(data), data.classes, data.in_channels, data.image_size) == (
        6,
        ["cat", "dog"],
        3,
        (4, 3),
    )
    data.loader_options = LoaderOptions(num_workers=2)
    batches = list(data.loader(4, sampler=[5, 2, 0, 1, 3, 4]))
    assert [b["index"].tolist() for b in batches] == [[5, 2, 0, 1], [3, 4]]
    assert batches[0]["label"].tolist() == [0, 1, 0, 1]
    resized = Image.fromarray(arrays[5]).resize((3, 4), Image.Resampling.BILINEAR)
    expected = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float() / 255
    assert torch.equal(batches[0]["image"][0], expected)
    small = data.subset(3, seed=0)
    assert len(small) == 3 and small.loader_options.num_workers == 2
    assert small.labels == small.part["label"] and small.labels != data.labels[:3]
    gray = build_dataset("hf_dataset", "test", path=str(tmp_path / "saved"), grayscale=True)
    assert len(gray) == 2 and gray[0]["image"].shape == (1, 32, 32)


def test_text_from_a_saved_dataset_and_bad_inputs(tmp_path: Path) -> None:
    part = datasets.Dataset.from_dict(
        {"text": ["good", "bad", "fine"], "label": ["pos", "neg", "pos"]}
    )
    datasets.DatasetDict({"train": part, "test": part}).save_to_disk(str(tmp_path / "text"))
    data = build_dataset("hf_dataset", "test", path=str(tmp_path / "text"))
    assert isinstance(data, TextDataset) and data.texts == ["good", "bad", "fine"]
    assert data.classes == ["neg", "pos"] and data.labels.tolist() == [1, 0, 1]
    with pytest.raises(DistillError, match=r"has no split 'test' \(it holds \['train'\]\)"):
        datasets.DatasetDict({"train": part}).save_to_disk(str(tmp_path / "one"))
        build_dataset("hf_dataset", "test", path=str(tmp_path / "one"))
    with pytest.raises(DistillError, match=r"has no column 'pixels'.*set image_column"):
        build_dataset("hf_dataset", path=str(tmp_path / "text"), image_column="pixels")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillError, match=r"is not a dataset saved with save_to_disk"):
        build_dataset("hf_dataset", path=str(tmp_path / "empty"))
