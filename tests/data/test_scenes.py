"""Synthetic detection scenes: determinism, tight boxes, scales, disjoint splits, the atomic cache."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.data import fashion_mnist as fm
from distill.data import scenes
from distill.data.yolo_format import check_yolo_labels, load_data_yaml
from distill.errors import DistillError
from helpers import fake_fashion_mnist

SIZE = 64
SMALL = {"train_images": 6, "val_images": 3, "image_size": SIZE}


def fake_items(n: int, seed: int) -> np.ndarray:
    """uint8 [n, 28, 28]: solid random items inside a blank margin of 1-4 pixels, like clothing."""
    images = fake_fashion_mnist(n, seed).images[:, 0].numpy()
    rng = np.random.default_rng(seed)
    items = np.zeros((n, 28, 28), dtype=np.uint8)
    for i, image in enumerate(images):
        top, left, bottom, right = rng.integers(1, 5, 4)
        items[i, top : 28 - bottom, left : 28 - right] = (
            80 + 175 * image[top : 28 - bottom, left : 28 - right]
        )
    return items


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake Fashion-MNIST folder: train items have classes 0-4, test items 5-9 (to tell them apart)."""
    root = tmp_path_factory.mktemp("fashion-mnist")
    for split, n, offset in (("train", 40, 0), ("test", 20, 5)):
        images_name, labels_name = fm.FILES[split]
        write_idx(root / f"{images_name}.gz", fake_items(n, seed=n))
        write_idx(root / f"{labels_name}.gz", np.arange(n) % 5 + offset)
    return root


def read_boxes(label_file: Path, size: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(class, (x0, y0, x1, y1)) in pixels from a YOLO label file."""
    boxes = []
    for line in label_file.read_text().splitlines():
        cls, cx, cy, w, h = (float(v) for v in line.split())
        corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        boxes.append((int(cls), tuple(round(v * size) for v in corners)))
    return boxes


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(fmnist: Path, tmp_path: Path) -> None:
    a = scenes.make_scenes(tmp_path / "a", **SMALL, root=fmnist)
    b = scenes.make_scenes(tmp_path / "b", **SMALL, root=fmnist)
    c = scenes.make_scenes(tmp_path / "c", **SMALL, seed=1, root=fmnist)
    fa, fb, fc = files(a.parent), files(b.parent), files(c.parent)
    assert fa.keys() == fb.keys() and len([k for k in fa if k.endswith(".png")]) == 9
    for name in fa:
        if name != "data.yaml":  # names its own folder
            assert fa[name] == fb[name], name
    assert fa["data.yaml"].replace(b"/a\n", b"/b\n") == fb["data.yaml"]
    assert fa["images/train/000000.png"] != fc["images/train/000000.png"]
    data = load_data_yaml(a)
    assert data["names"] == fm.CLASSES and data["nc"] == 10
    assert data["train"] == [a.parent / "images/train"] and data["val"] == [a.parent / "images/val"]


def test_boxes_are_tight_and_everything_else_is_background(fmnist: Path, tmp_path: Path) -> None:
    data_yaml = scenes.make_scenes(tmp_path / "s", **SMALL, root=fmnist)
    blank = np.zeros((1, 28, 28), np.uint8), np.zeros(1, np.int64)
    objects = 0
    for split in ("train", "val"):
        for png in sorted((data_yaml.parent / "images" / split).glob("*.png")):
            image = np.asarray(Image.open(png))
            assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
            rng = scenes.scene_rng(0, split, int(png.stem))
            background, none = scenes.render_scene(rng, *blank, SIZE, (1, 6), (6, 32))
            assert none == []
            boxes = read_boxes(data_yaml.parent / "labels" / split / f"{png.stem}.txt", SIZE)
            outside = np.ones((SIZE, SIZE), bool)
            for _, (x0, y0, x1, y1) in boxes:
                assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
                outside[y0:y1, x0:x1] = False
                changed = (image[y0:y1, x0:x1] != background[y0:y1, x0:x1]).any(axis=-1)
                # tight: the first and last row and column of the box hold pasted pixels
                assert changed[0].any() and changed[-1].any()
                assert changed[:, 0].any() and changed[:, -1].any()
            assert (image[outside] == background[outside]).all()
            objects += len(boxes)
    assert objects >= 9  # at least one object per scene


def test_scales_span_the_range_and_overlaps_are_limited(fmnist: Path) -> None:
    items, labels = fm.load_split(fmnist, "train")
    sides, count = [], 0
    for i in range(60):
        rng = scenes.scene_rng(3, "train", i)
        _, objects = scenes.render_scene(rng, items, labels, SIZE, (1, 4), (8, 32))
        boxes = [box for _, box in objects]
        count += len(boxes)
        sides += [max(x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes]
        for j, a in enumerate(boxes):
            assert all(scenes._iou(a, b) < scenes.MAX_IOU for b in boxes[:j])
    assert count > 60 and max(sides) <= 32
    assert min(sides) <= 10 and max(sides) >= 26  # small and large objects both occur


def test_train_and_val_take_items_from_different_splits(fmnist: Path, tmp_path: Path) -> None:
    data_yaml = scenes.make_scenes(tmp_path / "s", **SMALL, root=fmnist)
    train = check_yolo_labels(data_yaml, "train")
    val = check_yolo_labels(data_yaml.parent, "val")
    assert train.images == 6 and val.images == 3 and train.backgrounds == val.backgrounds == 0
    assert train.boxes == sum(train.per_class.values()) and train.boxes >= 6
    assert all(train.per_class[name] == 0 for name in fm.CLASSES[5:])  # test-split classes
    assert all(val.per_class[name] == 0 for name in fm.CLASSES[:5])  # train-split classes


def test_cache_is_written_atomically_and_reused(
    fmnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    real = scenes._write_split

    def killed_in_val(out: Path, split: str, *args: object) -> None:
        real(out, split, *args)
        if split == "val":
            raise KeyboardInterrupt

    monkeypatch.setattr(scenes, "_write_split", killed_in_val)
    with pytest.raises(KeyboardInterrupt):
        scenes.scenes_dir(**SMALL, root=fmnist)
    assert list((tmp_path / "cache" / "data").iterdir()) == []  # no half dataset, no temp folder
    monkeypatch.setattr(scenes, "_write_split", real)
    folder = scenes.scenes_dir(**SMALL, root=fmnist)
    assert folder.name.startswith("scenes-") and folder.parent == tmp_path / "cache" / "data"
    assert load_data_yaml(folder / "data.yaml")["path"] == folder

    def no_regeneration(*args: object) -> None:
        raise AssertionError("regenerated a cached dataset")

    other = scenes.scenes_dir(**SMALL, seed=1, root=fmnist)
    assert other.parent == folder.parent and other != folder  # other arguments: another folder
    monkeypatch.setattr(scenes, "_generate", no_regeneration)
    assert scenes.scenes_dir(**SMALL, root=fmnist) == folder


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scales": (8, 100)}, r"scales=\(8, 100\).*<= image_size=64"),
        ({"items": (3, 1)}, r"items=\(3, 1\)"),
        ({"train_images": 0}, "train_images=0"),
    ],
)
def test_bad_arguments(fmnist: Path, tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(DistillError, match=match):
        scenes.make_scenes(tmp_path / "s", **{**SMALL, **kwargs}, root=fmnist)


def test_refuses_a_folder_with_files_and_cli_prints_yaml(
    fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(DistillError, match="taken already exists.*new out_dir"):
        scenes.make_scenes(tmp_path / "taken", **SMALL, root=fmnist)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    args = [
        str(tmp_path / "cli"),
        "--train",
        "2",
        "--val",
        "1",
        "--size",
        "48",
        "--root",
        str(fmnist),
    ]
    assert scenes.main(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "data.yaml")
    assert scenes.main([*args[:1], "--size", "2", "--root", str(fmnist)]) == 2
    assert "error: scales=" in capsys.readouterr().err


def test_ultralytics_reads_the_scenes(fmnist: Path, tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data_yaml = scenes.make_scenes(tmp_path / "s", **SMALL, root=fmnist)
    data = check_det_dataset(str(data_yaml), autodownload=False)
    assert data["nc"] == 10 and data["names"][9] == "Ankle boot"
    dataset = YOLODataset(img_path=data["train"], imgsz=SIZE, data=data, augment=False)
    ours = check_yolo_labels(data_yaml, "train")
    assert len(dataset) == 6 and sum(len(lb["cls"]) for lb in dataset.labels) == ours.boxes
