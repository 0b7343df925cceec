"""``distill compare`` on a tiny YOLO pair: teacher, scratch and KD students, the KD student exported to
ONNX (decoded predictions, parity-checked) and scored by the same detection evaluation; mAP columns."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from det_helpers import detection_recipe, squares  # noqa: F401  (fixture)
from rich.console import Console

pytest.importorskip("ultralytics")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_detection_rows_teacher_students_and_onnx(tmp_path: Path, squares, monkeypatch) -> None:  # noqa: F811
    from distill.compare import TASK_DEFAULT_PIPELINES, compare
    from distill.compare.fair import with_references

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    teacher = detection_recipe(squares, tmp_path / "unused", teacher=None)
    teacher.update(name="det-teacher", student={"name": "yolo:yolo11n.yaml"}, distill={})
    teacher.pop("output")
    kd = detection_recipe(squares, tmp_path / "unused")
    kd["teacher"]["weights"] = "not/trained/yet"
    for name, recipe in (("teacher.yaml", teacher), ("kd.yaml", kd)):
        (tmp_path / name).write_text(yaml.safe_dump(recipe))
    out = tmp_path / "cmp"
    result = compare(
        tmp_path / "kd.yaml",
        out=out,
        teacher_recipe=tmp_path / "teacher.yaml",
        latency_repeats=2,
        console=Console(file=io.StringIO(), width=200),
    )
    rows = {r["pipeline"]: r for r in result["rows"]}
    # each exported student row is timed against the teacher exported the same way, added if not named
    expected, added = with_references(TASK_DEFAULT_PIPELINES["detection"])
    assert list(rows) == expected and "teacher-onnx" in added
    for r in rows.values():
        assert r["status"] == "ok", r
        assert 0 <= r["accuracy"] <= 100 and 0 <= r["map50"] <= 100
        assert r["map50"] >= r["accuracy"]  # IoU 0.5 is the easiest of mAP50-95's thresholds
        assert r["latency_ms_b1_t1"] > 0 and r["latency_ms_b16"] > 0
    torch_kd, onnx_kd = rows["student-kd"], rows["student-kd-onnx"]
    assert onnx_kd["runtime"] == "onnxruntime" and onnx_kd["params"] == torch_kd["params"]
    # the ONNX file is the same detector: the same mAP through the same validator
    assert onnx_kd["accuracy"] == pytest.approx(torch_kd["accuracy"], abs=0.5)
    assert onnx_kd["map50"] == pytest.approx(torch_kd["map50"], abs=0.5)
    md = (out / "report.md").read_text()
    assert "| mAP50-95 % |" in md and "| mAP50 % |" in md and "top-1" not in md
    assert json.loads((out / "report.json").read_text())["rows"] == result["rows"]
