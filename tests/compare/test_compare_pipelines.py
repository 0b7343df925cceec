"""``compare()`` end to end on a tiny Fashion-MNIST pair: every kind of pipeline, reuse, failed exports."""

from __future__ import annotations

import io
import json

import pytest
import yaml
from rich.console import Console

from distill.errors import DistillError
from helpers import count_of, tiny_recipe_dict

pytest.importorskip("torch_pruning")
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]

TEACHER = {"name": "cnn", "options": {"channels": [8, 16], "hidden": 32}}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One folder for the module: the teacher cache and the comparison runs are shared (and reused)."""
    folder = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILL_CACHE", str(folder / "cache"))
        yield folder


@pytest.fixture
def recipes(workspace):
    """A tiny teacher recipe and a KD recipe whose teacher is that one (weights come from the cache)."""
    tmp_path = workspace
    teacher = tiny_recipe_dict(tmp_path / "unused", name="tiny-teacher", student=TEACHER)
    kd = tiny_recipe_dict(
        tmp_path / "unused",
        name="tiny-kd",
        teacher={**TEACHER, "weights": "not/trained/yet"},
        distill={"terms": [{"loss": "kd", "options": {"temperature": 2.0}}]},
    )
    for name, data in (("teacher.yaml", teacher), ("kd.yaml", kd)):
        (tmp_path / name).write_text(yaml.safe_dump(data))
    return tmp_path / "teacher.yaml", tmp_path / "kd.yaml"


def run(recipes, out, pipelines, **kwargs):
    from distill.compare import compare

    teacher, kd = recipes
    return compare(
        kd,
        pipelines=pipelines,
        out=out,
        teacher_recipe=teacher,
        latency_repeats=2,
        calibration_samples=64,
        console=Console(file=io.StringIO(), width=200),
        **kwargs,
    )


def test_pruned_and_distilled_rows_are_measured_the_same_way(recipes, workspace, monkeypatch):
    out = workspace / "cmp"
    result = run(recipes, out, "teacher,student-kd,teacher-pruned,teacher-sparse,pruned-kd")
    rows = {r["pipeline"]: r for r in result["rows"]}
    assert list(rows) == ["teacher", "student-kd", "teacher-pruned", "teacher-sparse", "pruned-kd"]
    for r in rows.values():
        assert r["runtime"] == "torch" and r["status"] == "ok"
        count_of(r["accuracy"], 128)  # a whole number of the 128 test images
        assert r["latency_ms_b1_t1"] > 0 and r["latency_ms_b256"] > 0
    teacher, student = rows["teacher"], rows["student-kd"]
    assert teacher["agreement"] == 100.0
    for slug in ("teacher-pruned", "pruned-kd"):  # channel pruning really shrinks the teacher...
        assert rows[slug]["params"] <= student["params"] < teacher["params"]
        assert rows[slug]["size_bytes"] < teacher["size_bytes"] / 2  # (+ the same header size)
    sparse = rows["teacher-sparse"]  # ...unstructured pruning only zeroes weights
    assert sparse["params"] == teacher["params"] and sparse["size_bytes"] == teacher["size_bytes"]
    assert sparse["nonzero_params"] <= student["params"] * 1.2
    assert json.loads((out / "report.json").read_text())["rows"] == result["rows"]
    assert (out / "report.html").is_file() and (out / "accuracy_latency.png").is_file()
    assert (out / "pruned-kd" / "pruned.safetensors").is_file()

    # a second comparison with the same settings trains nothing and gives the same models
    import distill.api
    import distill.train

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(distill.api, "train", no_training)
    monkeypatch.setattr(distill.train.Trainer, "fit", no_training)
    again = run(recipes, out, "student-kd,pruned-kd")
    for r in again["rows"]:
        assert r["accuracy"] == rows[r["pipeline"]]["accuracy"]
        assert r["params"] == rows[r["pipeline"]]["params"]


def test_int8_student_runs_in_onnxruntime(recipes, workspace):
    pytest.importorskip("onnxruntime")
    out = workspace / "cmp"
    result = run(recipes, out, ["student-kd-onnx", "student-kd-int8"])
    rows = {r["pipeline"]: r for r in result["rows"]}
    # student-kd itself is made (and reused) but not a row; each file's same-runtime teacher is added
    assert list(rows) == ["teacher-onnx", "student-kd-onnx", "teacher-int8", "student-kd-int8"]
    onnx, int8 = rows["student-kd-onnx"], rows["student-kd-int8"]
    assert onnx["runtime"] == int8["runtime"] == "onnxruntime"
    assert (onnx["precision"], int8["precision"]) == ("float32", "int8")
    for name, ref in (("student-kd-onnx", "teacher-onnx"), ("student-kd-int8", "teacher-int8")):
        row, teacher = rows[name], rows[ref]
        assert row["reference"] == ref and teacher["precision"] == row["precision"]
        for cell in ("b1_t1", "b1_tall", "b256_t1", "b256_tall"):
            ratio = teacher[f"latency_ms_{cell}"] / row[f"latency_ms_{cell}"]
            assert row[f"speedup_{cell}"] == round(ratio, 2)
        assert row["pareto"].keys() >= {"latency_ms_b1_t1", "size_bytes"}
    assert int8["size_bytes"] == (out / "student-kd-int8" / "model.int8.onnx").stat().st_size
    assert int8["params"] == onnx["params"]  # the source model's count
    assert abs(int8["accuracy"] - onnx["accuracy"]) <= 10  # int8 stays close to float on 128 images
    assert onnx["agreement"] is not None and onnx["latency_ms_b1_t1"] > 0


def test_qat_student_is_an_int8_row_and_is_reused(recipes, workspace):
    """``student-kd-qat``: QAT from the KD student's run, int8 ONNX measured like every row; a second
    comparison reuses the file while the KD student is unchanged."""
    pytest.importorskip("onnxruntime")
    out = workspace / "cmp"
    rows = run(recipes, out, ["student-kd-qat"])["rows"]
    assert [r["pipeline"] for r in rows] == [
        "teacher-int8",
        "student-kd-qat",
    ]  # same-runtime teacher
    row = rows[1]
    path = out / "student-kd-qat" / "student.qat.int8.onnx"
    assert row["pipeline"] == "student-kd-qat" and row["runtime"] == "onnxruntime"
    assert row["size_bytes"] == path.stat().st_size and row["accuracy"] is not None
    before = path.stat().st_mtime_ns
    again = run(recipes, out, ["student-kd-qat"])["rows"][1]
    assert path.stat().st_mtime_ns == before and again["accuracy"] == row["accuracy"]


def test_an_export_failing_parity_is_a_failed_row_not_a_model(recipes, workspace, monkeypatch):
    pytest.importorskip("onnxruntime")
    from distill.export import ParityError, ParityReport

    def wrong_export(model, example, path, **kwargs):
        raise ParityError(ParityReport(False, 0.5, 1e-3, 1e-4, 2), path)

    monkeypatch.setattr("distill.export.export_onnx", wrong_export)
    out = workspace / "cmp"
    result = run(recipes, out, "student-kd,student-kd-int8")
    rows = {r["pipeline"]: r for r in result["rows"]}
    assert list(rows) == ["teacher", "student-kd", "teacher-int8", "student-kd-int8"]
    ok, failed = rows["student-kd"], rows["student-kd-int8"]
    assert ok["status"] == "ok" and ok["reference"] == "teacher"
    assert failed["status"].startswith("failed:") and rows["teacher-int8"]["status"] != "ok"
    assert "reference" not in failed and "speedup_b1_t1" not in failed
    assert "accuracy" not in failed and not (out / "student-kd-int8" / "model.onnx").exists()
    assert "failed" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pipelines": "teacher,studnet-kd"}, "Did you mean 'student-kd'"),
        ({"pipelines": ""}, "no pipelines given"),
        ({"teacher_recipe": None}, "teacher weights 'not/trained/yet'"),
    ],
)
def test_bad_requests_fail_before_any_training(recipes, tmp_path, monkeypatch, change, message):
    from distill.compare import compare

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    teacher, kd = recipes
    kwargs = {"pipelines": "teacher", "teacher_recipe": teacher, **change}
    with pytest.raises(DistillError, match=message):
        compare(kd, out=tmp_path / "cmp", console=Console(file=io.StringIO()), **kwargs)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "cmp").exists()
