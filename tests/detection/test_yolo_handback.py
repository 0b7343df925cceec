"""YOLO hand-back: a trained yolo student saved as an Ultralytics checkpoint that ``ultralytics.YOLO``
loads with the student's boxes and class names, that ``yolo export`` converts, and that distill's
allow-listed reader (``yolo:PATH``) accepts without arbitrary unpickling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from det_helpers import detection_recipe, squares  # noqa: F401  (fixture)

pytest.importorskip("ultralytics")


@pytest.fixture(scope="module")
def yolo_run(tmp_path_factory, squares) -> Path:  # noqa: F811
    from distill import api

    folder = tmp_path_factory.mktemp("yolo-handback")
    recipe = detection_recipe(squares, folder / "run")
    del recipe["teacher"], recipe["distill"]  # the student alone: hand-back needs no teacher
    (folder / "r.yaml").write_text(yaml.safe_dump(recipe))
    api.train(folder / "r.yaml")
    return folder / "run"


def test_ultralytics_loads_the_checkpoint_with_the_students_boxes(yolo_run, tmp_path):
    from ultralytics import YOLO
    from ultralytics.utils.nms import non_max_suppression

    from distill import open_run
    from distill.handback import handback_run
    from distill.models.yolo import yolo_model

    result = handback_run(yolo_run)
    path = Path(result["folder"]) / "student.pt"
    assert result["format"] == "ultralytics" and result["check"]["ok"] and path.is_file()
    yolo = YOLO(str(path))
    assert yolo.task == "detect" and yolo.names == {0: "red", 1: "green", 2: "blue"}
    student = open_run(yolo_run).student
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = non_max_suppression(student(x)[0], conf_thres=0.001)
        got = non_max_suppression(yolo.model.eval()(x)[0], conf_thres=0.001)
    assert sum(len(b) for b in want) > 0  # there are boxes to compare
    for a, b in zip(want, got, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)
    again = yolo_model(str(path), 3, 3)  # distill's safe reader accepts the file as it is
    assert type(again).__name__ == "DetectionModel"
    exported = YOLO(str(path)).export(format="torchscript", imgsz=64)  # `yolo export` converts it
    assert Path(exported).is_file()
