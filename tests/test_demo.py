"""``distill demo --tiny`` end to end: teacher (cached), scratch and KD students, report and plot."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from helpers import count_of

ROW_KEYS = {
    "name",
    "accuracy",
    "params",
    "size_bytes",
    "latency_ms_b1",
    "latency_ms_b256",
    "agreement",
}


@pytest.mark.integration
def test_tiny_demo_report_and_teacher_cache(tmp_path, monkeypatch):
    from distill import api, demo

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo"
    console_text = io.StringIO()
    result = demo.run_demo(out=out, tiny=True, console=Console(file=console_text, width=120))

    report = json.loads((out / "report.json").read_text())
    rows = report["rows"]
    assert [r["name"] for r in rows] == ["teacher", "student (scratch)", "student (KD)"]
    assert rows == result["rows"]
    for row in rows:
        assert ROW_KEYS <= row.keys(), row
        # what the run's own last evaluation measured (the report rounds to 2 decimals): a whole number
        # of the 512 test images
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert row["accuracy"] == pytest.approx(summary["last"]["top1"], abs=0.005)
        count_of(summary["last"]["top1"], 512)
        assert isinstance(row["params"], int) and row["params"] > 0
        assert row["size_bytes"] > 4 * row["params"] * 0.9  # float32 weights, plus a header
        assert row["latency_ms_b1"] > 0 and row["latency_ms_b256"] > 0
        assert 0.0 <= row["agreement"] <= 100.0
    teacher, scratch, kd = rows
    assert teacher["agreement"] == 100.0
    kd_summary = json.loads((Path(kd["run_dir"]) / "summary.json").read_text())
    assert kd["agreement"] == pytest.approx(kd_summary["last"]["agreement"], abs=0.005)
    assert scratch["params"] == kd["params"]  # the same student architecture
    assert teacher["params"] >= 10 * kd["params"]
    assert teacher["size_bytes"] > kd["size_bytes"]
    assert report["tiny"] is True

    md = (out / "report.md").read_text()
    assert "| teacher |" in md and "| student (KD) |" in md and "accuracy_latency.png" in md
    # the report points to the benchmarks, and those files exist
    for doc in ("docs/benchmarks/methods_6epoch.md", "docs/benchmarks/kd_recipes.md"):
        assert doc in md and (Path(__file__).resolve().parents[1] / doc).is_file(), doc
    png = out / "accuracy_latency.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert Path(result["paths"]["plot"]) == png

    # the teacher was trained into the cache, the students into the output folder
    teacher_dir = Path(teacher["run_dir"])
    assert teacher_dir.parent == tmp_path / "cache"
    assert (out / "student-scratch" / "model.safetensors").is_file()
    assert (out / "student-kd" / "model.safetensors").is_file()
    kd_recipe = api.run_recipe(out / "student-kd")
    weights = Path(kd_recipe.teacher.weights)
    assert (
        weights == teacher_dir or teacher_dir in weights.parents
    )  # the KD student learnt from the cached teacher

    # a second demo with the same settings reuses the cached teacher: no training, files untouched
    ckpt = teacher_dir / "model.safetensors"
    before = (ckpt.stat().st_mtime_ns, ckpt.read_bytes())

    def no_teacher_training(recipe, *args, **kwargs):
        raise AssertionError(f"the cached teacher was retrained ({recipe.name})")

    monkeypatch.setattr(demo.api, "train", no_teacher_training)
    second = io.StringIO()
    assert (
        demo._teacher_run(demo.TINY, fresh=False, console=Console(file=second, width=200))
        == teacher_dir
    )
    assert "reusing" in second.getvalue()
    assert (ckpt.stat().st_mtime_ns, ckpt.read_bytes()) == before


def test_demo_with_compression_is_the_comparison_of_the_demo_pair(tmp_path, monkeypatch):
    """``run_demo(compress=True)``: ``compare`` on the demo's KD recipe, with the demo's (cached) teacher."""
    import distill.compare
    from distill import demo

    calls = []
    monkeypatch.setattr(distill.compare, "compare", lambda *a, **kw: calls.append((a, kw)) or {})
    demo.run_demo(out=tmp_path / "d", data_root="/data/fm", tiny=True, compress=True)
    ((args, kwargs),) = calls
    assert args == ("fashion_mnist/kd",)
    assert kwargs["teacher_recipe"] == "fashion_mnist/teacher" and kwargs["out"] == tmp_path / "d"
    assert kwargs["overrides"] == ["data.root=/data/fm"] and kwargs["tiny"] is True
    # the same teacher cache as the plain demo: compare applies TINY to the teacher like _teacher_run
    assert distill.compare.TINY is demo.TINY


def test_demo_command_passes_compress(tmp_path, monkeypatch):
    """``distill demo --compress`` reaches ``run_demo(compress=True)``; without the flag it stays off."""
    from distill import demo
    from distill.cli import main

    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda *a, **kw: calls.append(kw))
    assert main(["demo", "--tiny", "--compress", "--out", str(tmp_path / "d")]) == 0
    assert main(["demo", "--tiny", "--out", str(tmp_path / "e")]) == 0
    assert [c["compress"] for c in calls] == [True, False]
