"""Detection end to end through recipes: a YOLOv8n student distilled from a YOLO11n teacher (another family)
trains, logs its loss parts, evaluates with mAP and resumes exactly; bad recipes fail before training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from det_helpers import detection_recipe, squares  # noqa: F401  (fixture)

pytest.importorskip("ultralytics")

from distill import api  # noqa: E402
from distill.config.build import build, make_trainer  # noqa: E402
from distill.config.schema import Recipe  # noqa: E402
from distill.errors import DistillError  # noqa: E402


def _built(recipe: dict):
    return build(Recipe.model_validate(recipe))


def test_cross_family_kd_trains_logs_and_evaluates(tmp_path: Path, squares) -> None:  # noqa: F811
    recipe = detection_recipe(squares, tmp_path / "run")
    recipe["distill"]["terms"].append({"loss": "kd", "student": "@scores", "teacher": "@scores"})
    summary = make_trainer(_built(recipe)).fit()
    assert summary["steps"] == 2 and summary["primary_metric"] == "map50_95"
    assert {"map50_95", "map50", "precision", "recall"} <= set(summary["last"])
    assert summary["last"]["images"] == 4
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert steps and all(math.isfinite(r["loss"]) for r in steps)
    assert {"task", "cwd", "kd", "box", "cls", "dfl"} <= set(steps[0]), steps[0]
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_two_steps_equal_one_step_stop_and_resume(tmp_path: Path, squares) -> None:  # noqa: F811
    """With augmentation on (flips, HSV, affine; mosaic off), a resumed run repeats an uninterrupted one."""
    states = []
    for stops in ((), (1,)):
        recipe = detection_recipe(squares, tmp_path / str(len(stops)))
        built = _built(recipe)
        for stop in stops:
            make_trainer(built).fit(stop_after=stop)
            built = _built(recipe)
        summary = make_trainer(built).fit(resume=bool(stops))
        assert summary["steps"] == 2
        states.append(built.distiller.trainable().state_dict())
    for name, tensor in states[0].items():
        torch.testing.assert_close(states[1][name], tensor, rtol=0, atol=0, msg=name)


def test_student_without_kd_trains_on_its_own_loss(tmp_path: Path, squares) -> None:  # noqa: F811
    recipe = detection_recipe(squares, tmp_path / "scratch", teacher=None)
    recipe["distill"] = {}
    summary = make_trainer(_built(recipe)).fit()
    assert summary["steps"] == 2 and math.isfinite(summary["last"]["map50_95"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"distill.terms": [{"loss": "fitnet", "student": "model.99", "teacher": "model.3"}]},
         "model.99"),
        ({"teacher.name": "yolo:yolov8s.yaml",
          "distill.terms": [{"loss": "fitnet", "student": "@p3", "teacher": "@p3"}]},
         r"@p3.*\(2, 64, 8, 8\).*\(2, 128, 8, 8\); add a projector"),
        ({"distill.terms": [{"loss": "cwd", "student": "@p6", "teacher": "@p3"}]}, "@p6"),
        ({"student.name": "yolo:yolov99n.yaml"}, "yolov99n"),
        ({"data.options": {"image_size": 100}}, "multiple of 32"),
        ({"data.options": {"image_size": 64, "hyp": {"mosiac": 0.0}}}, "mosaic"),
    ],
)  # fmt: skip
def test_bad_detection_recipes_fail_before_training(tmp_path, squares, edit, message) -> None:  # noqa: F811
    recipe = detection_recipe(squares, tmp_path / "bad", **edit)
    with pytest.raises(DistillError, match=message) as err:
        _built(recipe)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "bad").exists()


def test_malformed_label_names_the_file(tmp_path: Path, squares) -> None:  # noqa: F811
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(squares.parent, root)
    (root / "data.yaml").write_text(
        (root / "data.yaml").read_text().replace(str(squares.parent), str(root))
    )
    (root / "labels" / "train" / "001.txt").write_text("7 0.5 0.5 0.2 0.2\n")  # class 7 of 3
    recipe = detection_recipe(root / "data.yaml", tmp_path / "run")
    with pytest.raises(DistillError, match=r"001\.txt:1"):
        api.train(Recipe.model_validate(recipe))


def test_box_losses_outside_detection_say_where_boxes_come_from(tmp_path: Path) -> None:
    """fgd on a classification recipe fails at build time, naming the detection task, not at step 1."""
    from helpers import tiny_recipe_dict

    recipe = tiny_recipe_dict(tmp_path / "run")
    recipe["teacher"] = {"name": "cnn", "options": {"channels": [4, 8]}}
    recipe["distill"] = {
        "terms": [{"loss": "fgd", "student": "features.0", "teacher": "features.0"}]
    }
    with pytest.raises(DistillError, match="boxes.*task: detection"):
        _built(recipe)


def test_ld_on_a_yolo26_head_fails_at_build_not_at_step_one(tmp_path: Path, squares) -> None:  # noqa: F811
    """YOLO26 regresses boxes directly: ld refuses it while the recipe builds, before any run is touched."""
    recipe = detection_recipe(
        squares,
        tmp_path / "run",
        **{"student.name": "yolo:yolo26n.yaml", "teacher.name": "yolo:yolo26n.yaml"},
    )
    recipe["distill"]["terms"] = [{"loss": "ld", "student": "@boxes", "teacher": "@boxes"}]
    with pytest.raises(DistillError, match=r"term 'ld'.*reg_max.*score_kd") as err:
        _built(recipe)
    assert "\n" not in str(err.value)
