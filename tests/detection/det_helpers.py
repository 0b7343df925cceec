"""Tiny YOLO-format datasets written on the fly (coloured squares on noise) and tiny detection recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

COLOURS = [(230, 40, 40), (40, 230, 40), (40, 40, 230)]


def write_squares(root: Path, train: int = 8, val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """A 3-class dataset of coloured squares (class = colour) in YOLO layout; returns its data.yaml."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = (rng.random((size, size, 3)) * 60).astype(np.uint8)
            lines = []
            for _ in range(int(rng.integers(1, 3))):
                c, side = int(rng.integers(0, 3)), int(rng.integers(size // 5, size // 2))
                x, y = (int(v) for v in rng.integers(0, size - side, 2))
                image[y : y + side, x : x + side] = COLOURS[c]
                cx, cy, w = (x + side / 2) / size, (y + side / 2) / size, side / size
                lines.append(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {w:.6f}")
            Image.fromarray(image).save(root / "images" / split / f"{i:03d}.png")
            (root / "labels" / split / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    data_yaml = root / "data.yaml"
    data_yaml.write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: red\n  1: green\n  2: blue\n"
    )
    return data_yaml


def detection_recipe(data_yaml: Path, output: Path, **edits: object) -> dict:
    """YOLOv8n on 64 px squares, 2 steps of batch 4, a cwd term on @p3 from a YOLO11n teacher."""
    recipe: dict = {
        "name": "det-tiny",
        "task": "detection",
        "data": {
            "name": "yolo",
            "root": str(data_yaml),
            "options": {"image_size": 64, "hyp": {"mosaic": 0.0}},
        },
        "student": {"name": "yolo:yolov8n.yaml"},
        "teacher": {"name": "yolo:yolo11n.yaml"},
        "distill": {
            "terms": [
                {"loss": "cwd", "student": "@p3", "teacher": "@p3", "projector": "conv1x1"},
            ]
        },
        "train": {
            "epochs": 1,
            "batch_size": 4,
            "eval_batch_size": 4,
            "optimizer": "adamw",
            "lr": 1e-3,
            "progress": False,
            "device": "cpu",
            "log_every": 1,
        },  # fmt: skip
        "output": str(output),
    }
    for key, value in edits.items():
        section, _, leaf = key.rpartition(".")
        target = recipe
        for part in filter(None, section.split(".")):
            target = target.setdefault(part, {})
        target[leaf] = value
    return recipe


@pytest.fixture(scope="session")
def squares(tmp_path_factory) -> Path:
    pytest.importorskip("ultralytics")
    return write_squares(tmp_path_factory.mktemp("squares"))
