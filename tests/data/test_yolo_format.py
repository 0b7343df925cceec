"""YOLO data.yaml and label checks, and COCO -> YOLO conversion, on tiny hand-made datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from distill.data.coco import coco_to_yolo
from distill.data.yolo_format import check_yolo_labels, load_data_yaml
from distill.errors import DistillError


def make_yolo(root: Path, labels: dict[str, str], images: tuple[str, ...] = ()) -> Path:
    """A 2-class dataset: an image per label file (plus ``images``), labels as given; returns data.yaml."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    for name in {*labels, *images}:
        Image.new("RGB", (8, 8)).save(root / "images" / "train" / f"{name}.png")
    for name, text in labels.items():
        (root / "labels" / "train" / f"{name}.txt").write_text(text)
    data = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "names": ["cat", "dog"],
    }
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root / "data.yaml"


def test_load_data_yaml_resolves_folders(tmp_path: Path) -> None:
    data_yaml = make_yolo(tmp_path, {})
    data_yaml.write_text(
        "path: .\ntrain: images/train\nval: [images/val]\nnc: 2\nnames: {0: cat, 1: dog}\n"
    )
    data = load_data_yaml(data_yaml)
    assert data["names"] == ["cat", "dog"] and data["nc"] == 2 and data["path"] == tmp_path
    assert data["train"] == [tmp_path / "images/train"] and data["val"] == [tmp_path / "images/val"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("train: images/train\nnames: [a]\n", r"key 'val' is missing; add val: images/val"),
        ("train: images/train\nval: images/val\n", "key 'names' is missing"),
        ("train: images/train\nval: images/val\nnc: 3\nnames: [a, b]\n", "nc: 3 but names has 2"),
        ("train: images/train\nval: images/valid\nnames: [a]\n", r"val: images/valid resolves to"),
        ("train: images/train\nval: images/val\nnames: {1: a}\n", r"names keys \[1\] are not 0..0"),
        ("- just\n- a list\n", "not a mapping"),
    ],
)
def test_load_data_yaml_errors(tmp_path: Path, text: str, match: str) -> None:
    data_yaml = make_yolo(tmp_path, {})
    data_yaml.write_text(text)
    with pytest.raises(DistillError, match=match) as info:
        load_data_yaml(data_yaml)
    assert str(data_yaml) in str(info.value)


def test_image_list_file(tmp_path: Path) -> None:
    data_yaml = make_yolo(tmp_path, {"a": "1 0.5 0.5 0.2 0.2\n", "b": "0 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "some.txt").write_text("./images/train/a.png\n\n")
    data_yaml.write_text(f"path: {tmp_path}\ntrain: some.txt\nval: images/val\nnames: [a, b]\n")
    assert load_data_yaml(data_yaml)["train"] == [tmp_path / "some.txt"]
    summary = check_yolo_labels(data_yaml, "train")
    assert summary.images == 1 and summary.per_class == {"a": 0, "b": 1}


def test_missing_data_yaml(tmp_path: Path) -> None:
    with pytest.raises(DistillError, match=r"nowhere\.yaml not found"):
        load_data_yaml(tmp_path / "nowhere.yaml")
    with pytest.raises(DistillError, match="holds no data.yaml"):
        check_yolo_labels(tmp_path, "train")


def test_check_labels_counts_backgrounds_and_orphans(tmp_path: Path) -> None:
    labels = {"a": "0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.1 0.1\n\n", "b": "", "c": "1 1 1 1 1"}
    data_yaml = make_yolo(tmp_path, labels, images=("d",))
    (tmp_path / "labels" / "train" / "gone.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    summary = check_yolo_labels(data_yaml, "train")
    assert (summary.images, summary.boxes, summary.backgrounds) == (4, 3, 2)  # b: empty, d: no file
    assert summary.per_class == {"cat": 1, "dog": 2}
    assert summary.labels_without_image == [tmp_path / "labels" / "train" / "gone.txt"]
    assert check_yolo_labels(tmp_path, "val").images == 0
    with pytest.raises(DistillError, match="no 'tset' split; use one of train, val"):
        check_yolo_labels(data_yaml, "tset")


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("0 0.5 0.5 0.2", r"4 values in '0 0.5 0.5 0.2'; write 5: class cx cy w h"),
        ("0 0.1 0.1 0.2 0.1 0.2 0.2", "6 coordinates .a polygon segment.*only boxes"),
        ("2 0.5 0.5 0.2 0.2", r"class 2 is not an integer in \[0, 2\)"),
        ("0.5 0.5 0.5 0.2 0.2", r"class 0.5 is not an integer"),
        ("-1 0.5 0.5 0.2 0.2", r"class -1 is not"),
        ("0 1.2 0.5 0.2 0.2", r"cx = 1.2 is outside \[0, 1\]; normalise"),
        ("0 0.5 nan 0.2 0.2", r"cy = nan is outside"),
        ("0 0.5 0.5 inf 0.2", r"w = inf is outside"),
        ("0 0.5 0.5 0.2 0", r"w=0.2 h=0 is not positive"),
        ("0 0.5 0.5 x 0.2", "non-number"),
    ],
)
def test_bad_label_line_names_file_and_line(tmp_path: Path, line: str, match: str) -> None:
    data_yaml = make_yolo(
        tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": f"1 0.5 0.5 0.1 0.1\n{line}\n"}
    )
    with pytest.raises(DistillError, match=match) as info:
        check_yolo_labels(data_yaml, "train")
    assert str(info.value).startswith(f"{tmp_path / 'labels' / 'train' / 'b.txt'}:2: ")


def test_tiny_overshoot_is_accepted(tmp_path: Path) -> None:
    data_yaml = make_yolo(tmp_path, {"a": "1 1.0000005 0.5 1e-3 0.2\n"})
    assert check_yolo_labels(data_yaml, "train").boxes == 1


# --- COCO ------------------------------------------------------------------------------------------


def coco_files(root: Path, **changes: object) -> tuple[Path, Path]:
    """3 images (200x100, 100x100, 50x40: the last has only a crowd box), categories 3 and 90."""
    images_dir = root / "raw"
    (images_dir / "sub").mkdir(parents=True)
    for name, size in (
        ("one.jpg", (200, 100)),
        ("sub/two.jpg", (100, 100)),
        ("three.jpg", (50, 40)),
    ):
        Image.new("RGB", size).save(images_dir / name)
    coco = {
        "images": [
            {"id": 1, "file_name": "one.jpg", "width": 200, "height": 100},
            {"id": 7, "file_name": "sub/two.jpg", "width": 100, "height": 100},
            {"id": 9, "file_name": "three.jpg", "width": 50, "height": 40},
        ],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 90, "bbox": [10, 20, 50, 40], "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 3, "bbox": [0, 0, 200, 100]},
            {"id": 13, "image_id": 7, "category_id": 3, "bbox": [25, 50, 50, 25]},
            {"id": 14, "image_id": 9, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 1},
        ],
    }
    for key, value in changes.items():
        coco[key] = value
    path = root / "instances.json"
    path.write_text(json.dumps(coco))
    return path, images_dir


def test_coco_to_yolo_round_trip(tmp_path: Path) -> None:
    annotations, images_dir = coco_files(tmp_path)
    out = tmp_path / "yolo"
    data_yaml = coco_to_yolo(annotations, images_dir, out, split="train")
    assert data_yaml == out / "data.yaml"
    labels = out / "labels" / "train"
    assert (labels / "one.txt").read_text().splitlines() == [
        "1 0.175000 0.400000 0.250000 0.400000",  # toothbrush (id 90) is class 1, car (id 3) class 0
        "0 0.500000 0.500000 1.000000 1.000000",
    ]
    assert (labels / "sub" / "two.txt").read_text() == "0 0.500000 0.625000 0.500000 0.250000\n"
    assert (labels / "three.txt").read_text() == ""  # only a crowd box: a background image
    assert (out / "images" / "train" / "sub" / "two.jpg").read_bytes() == (
        images_dir / "sub" / "two.jpg"
    ).read_bytes()
    coco_to_yolo(annotations, images_dir, out, split="val", copy=True)
    assert not (out / "images" / "val" / "one.jpg").is_symlink()
    data = load_data_yaml(data_yaml)
    assert data["names"] == ["car", "toothbrush"] and data["nc"] == 2
    summary = check_yolo_labels(data_yaml, "val")
    assert (summary.images, summary.boxes, summary.backgrounds) == (3, 3, 1)
    assert summary.per_class == {"car": 2, "toothbrush": 1}
    # the same conversion again is reused; another source for a converted split is refused
    assert coco_to_yolo(annotations, images_dir, out, split="train") == data_yaml
    other, _ = coco_files(tmp_path / "other", annotations=[])
    with pytest.raises(
        DistillError, match="not a conversion of instances.json; convert into a new"
    ):
        coco_to_yolo(other, images_dir, out, split="train")


@pytest.mark.parametrize(
    ("annotation", "match"),
    [
        (
            {"bbox": [180, 20, 50, 40]},
            r"annotation 12: bbox \[180, 20, 50, 40\] lies outside image 1",
        ),
        ({"bbox": [10, 20, 0, 40]}, r"annotation 12: bbox .* non-positive size"),
        ({"bbox": [10, 20, 40]}, r"annotation 12: bbox \[10, 20, 40\] is not \[x, y, w, h\]"),
        ({"category_id": 5}, r"annotation 12: category_id 5 is not one of \[3, 90\]"),
        ({"image_id": 2}, r"annotation 12: image_id 2 is not in 'images'"),
    ],
)
def test_malformed_coco_annotation_names_its_id(
    tmp_path: Path, annotation: dict, match: str
) -> None:
    base = {"id": 12, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10]}
    annotations, images_dir = coco_files(tmp_path, annotations=[{**base, **annotation}])
    with pytest.raises(DistillError, match=match):
        coco_to_yolo(annotations, images_dir, tmp_path / "yolo")
    assert not (tmp_path / "yolo").exists()  # checked before anything is written


def test_coco_file_errors(tmp_path: Path) -> None:
    annotations, images_dir = coco_files(tmp_path)
    with pytest.raises(DistillError, match="missing.json not found"):
        coco_to_yolo(tmp_path / "missing.json", images_dir, tmp_path / "yolo")
    with pytest.raises(DistillError, match=r"image file one.jpg not found in .*elsewhere"):
        coco_to_yolo(annotations, tmp_path / "elsewhere", tmp_path / "yolo")
    annotations.write_text("{not json")
    with pytest.raises(DistillError, match="is not valid JSON"):
        coco_to_yolo(annotations, images_dir, tmp_path / "yolo")
    with pytest.raises(DistillError, match="split 'vall'.*Did you mean 'val'"):
        coco_to_yolo(annotations, images_dir, tmp_path / "yolo", split="vall")
