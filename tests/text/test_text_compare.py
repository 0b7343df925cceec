"""``distill compare`` on a tiny text pair (a random 3-layer BERT teacher, a 2-layer student cut from it):
every default text row measured like the image rows, ONNX and int8 students evaluated by the text task,
channel pruning skipped with its reason, macro-F1 and the batch-64 latency in the report."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from text_helpers import save_tiny_bert, write_reviews

from helpers import count_of

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]

TRAIN = {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "optimizer": "adamw", "lr": 1e-3,
         "progress": False, "device": "cpu", "log_every": 1}  # fmt: skip


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("text-compare")
    teacher_dir = save_tiny_bert(folder / "bert", layers=3)
    data = {"name": "text_file", "root": str(write_reviews(folder / "reviews", n=24)),
            "options": {"max_length": 12}}  # fmt: skip
    teacher = {"name": "text-teacher", "task": "text_classification", "data": data,
               "student": {"name": f"hf:{teacher_dir}"}, "train": TRAIN}  # fmt: skip
    kd = {
        **teacher,
        "name": "text-kd",
        "teacher": {"name": f"hf:{teacher_dir}", "weights": "not/trained/yet"},
        "student": {"name": "from_teacher", "options": {"layers": [0, 2]}},
        "distill": {"terms": [{"loss": "kd", "options": {"temperature": 2.0}}]},
    }
    for name, recipe in (("teacher.yaml", teacher), ("kd.yaml", kd)):
        (folder / name).write_text(yaml.safe_dump(recipe))
    return folder / "teacher.yaml", folder / "kd.yaml", folder


def test_text_rows_teacher_students_onnx_and_int8(recipes, monkeypatch):
    from distill.compare import TASK_DEFAULT_PIPELINES, compare
    from distill.compare.fair import with_references

    teacher, kd, folder = recipes
    monkeypatch.setenv("DISTILL_CACHE", str(folder / "cache"))
    out = folder / "cmp"
    pipelines = [*TASK_DEFAULT_PIPELINES["text_classification"], "teacher-pruned"]
    result = compare(
        kd,
        pipelines=pipelines,
        out=out,
        teacher_recipe=teacher,
        latency_repeats=2,
        console=Console(file=io.StringIO(), width=200),
    )
    rows = {r["pipeline"]: r for r in result["rows"]}
    # each exported student row is timed against the teacher exported the same way, added if not named
    expected, added = with_references(pipelines)
    assert list(rows) == expected and "teacher-onnx" in added and "teacher-int8" in rows
    skipped = rows.pop("teacher-pruned")
    assert skipped["status"].startswith("skipped: channel pruning") and "accuracy" not in skipped
    for r in rows.values():
        assert r["status"] == "ok", r
        count_of(r["accuracy"], 12)  # a whole number of the 12 test texts
        assert 0 <= r["macro_f1"] <= 100
        assert r["latency_ms_b1_t1"] > 0 and r["latency_ms_b64"] > 0 and "latency_ms_b256" not in r
    torch_kd, onnx_kd, int8_kd = (
        rows["student-kd"],
        rows["student-kd-onnx"],
        rows["student-kd-int8"],
    )
    # the ONNX file is the same model: the same predictions on every test text
    assert onnx_kd["runtime"] == "onnxruntime" and onnx_kd["accuracy"] == torch_kd["accuracy"]
    assert onnx_kd["nll"] == pytest.approx(torch_kd["nll"], abs=1e-3)
    assert onnx_kd["params"] == int8_kd["params"] == torch_kd["params"] < rows["teacher"]["params"]
    int8_file = out / "student-kd-int8" / "model.int8.onnx"
    assert int8_kd["size_bytes"] == int8_file.stat().st_size
    ops = {node.op_type for node in onnx.load(str(int8_file)).graph.node}
    assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops  # text int8 is dynamic
    assert rows["teacher"]["agreement"] == 100.0
    md = (out / "report.md").read_text()
    assert "| macro-F1 % |" in md and "| ms @ b64 |" in md and "skipped: channel pruning" in md
    assert json.loads((out / "report.json").read_text())["rows"] == result["rows"]


def test_latency_example_is_one_max_length_sequence(recipes, monkeypatch):
    """Text rows are timed on sequences of the data's max_length tokens, packed for the harness."""
    import torch

    from distill.compare.named import packed
    from distill.config.load import load_recipe

    teacher, kd, folder = recipes
    weights = next((folder / "cache").glob("text-teacher-*/model.safetensors"), None)
    if weights is None:
        pytest.skip("needs the teacher cached by the comparison test")
    from distill.compare import Context

    recipe = load_recipe(kd, [f"teacher.weights={weights}", f"output={folder / 'unused'}"])
    ctx = Context(recipe, folder / "ctx", Console(file=io.StringIO()))
    assert ctx.named_inputs and ctx.large_batch == 64
    assert {k: tuple(v.shape) for k, v in ctx.example.items()} == {
        "input_ids": (12,),
        "attention_mask": (12,),
    }
    model, x = packed(ctx.teacher, ctx.example)
    batch = x.unsqueeze(0).expand(3, *x.shape)
    expected = ctx.teacher(**{k: v.expand(3, -1) for k, v in ctx.example.items()}).logits
    torch.testing.assert_close(model(batch).logits, expected)
