"""Text models through the export path: a tiny BERT with named inputs (input_ids, attention_mask,
token_type_ids) exported with dynamic batch and sequence axes, matching PyTorch at other batch sizes and
lengths, evaluated by the text task through OnnxModule; ``distill export`` on a trained text run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from text_helpers import save_tiny_bert, tiny_bert, write_reviews

from distill import api
from distill.cli import main
from distill.errors import DistillError
from distill.export import OnnxModule, check_parity, export_onnx
from distill.tasks import TextClassificationTask
from helpers import count_of

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def encode(model, texts: list[str]) -> dict[str, torch.Tensor]:
    """Token ids and mask from the model's tokenizer, plus BERT's token_type_ids (a third named input)."""
    batch = dict(model.distill_tokenizer(texts, padding=True, return_tensors="pt"))
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    return batch


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    model = tiny_bert(hidden=16, layers=2).eval()
    example = encode(model, ["the film was good", "a bad plot", "fun", "very dull actors"])
    path = export_onnx(model, example, tmp_path_factory.mktemp("text-onnx") / "bert.onnx")
    return model, path


@pytest.mark.parametrize(
    "texts",
    [
        ["good"],  # batch 1, 3 tokens
        ["the film was not very good the plot was dull and the actors awful"]
        * 2,  # longer than traced
        ["a", "great fun film", "bad", "the plot is not fun", "dull", "very very good"],
    ],
)
def test_dynamic_batch_and_sequence_match_pytorch(exported, texts):
    model, path = exported
    inputs = encode(model, texts)
    with torch.no_grad():
        expected = model(**inputs).logits
    module = OnnxModule(path)
    assert module.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    got = module(**inputs)
    assert got.shape == (len(texts), 2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(module(inputs), got)  # a dict positionally works too
    assert check_parity(model, path, inputs).ok


def test_text_task_evaluates_the_onnx_module_like_the_model(exported):
    model, path = exported
    texts = ["good fun", "bad", "the film was dull", "great actors", "awful plot", "fun"] * 2
    loader = [{**encode(model, texts[i : i + 4]), "label": torch.tensor([1, 0, 0, 1])[: len(texts[i : i + 4])]} for i in range(0, 12, 4)]  # fmt: skip
    task = TextClassificationTask()
    reference = task.evaluate(model, loader)
    onnx_metrics = task.evaluate(OnnxModule(path), loader, teacher=model)
    assert onnx_metrics["top1"] == reference["top1"]
    assert onnx_metrics["macro_f1"] == reference["macro_f1"]
    assert onnx_metrics["nll"] == pytest.approx(reference["nll"], abs=1e-5)
    assert onnx_metrics["agreement"] == 100.0


def test_wrong_inputs_name_the_expected_ones(exported):
    model, path = exported
    inputs = encode(model, ["good"])
    module = OnnxModule(path)
    with pytest.raises(DistillError, match=r"takes the inputs \['input_ids', 'attention_mask'"):
        module(input_ids=inputs["input_ids"])
    with pytest.raises(DistillError, match="keyword arguments"):
        module(inputs["input_ids"])


def test_distill_export_on_a_text_run(tmp_path, capsys):
    teacher = save_tiny_bert(tmp_path / "bert", layers=3)
    recipe = {
        "name": "text-tiny",
        "task": "text_classification",
        "data": {"name": "text_file", "root": str(write_reviews(tmp_path / "reviews")),
                 "options": {"max_length": 16}},
        "teacher": {"name": f"hf:{teacher}"},
        "student": {"name": "from_teacher", "options": {"layers": [0, 2]}},
        "distill": {"terms": [{"loss": "kd"}]},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 5, "progress": False,
                  "device": "cpu", "optimizer": "adamw", "lr": 1e-3},
        "output": str(tmp_path / "run"),
    }  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    api.train(tmp_path / "r.yaml")
    code = main(["export", str(tmp_path / "run"), "--int8", "--checkpoint", "last"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "export" / "export.json").read_text())
    fp32, int8 = report["files"]["fp32"], report["files"]["int8"]
    # parity over every test text, batch by batch (eval batches of 5, each padded to its own length)
    assert fp32["parity"]["ok"] and fp32["parity"]["n"] == 12
    reference = api.evaluate(tmp_path / "run", "last")
    assert fp32["metrics"]["top1"] == pytest.approx(reference["top1"], abs=1e-3)
    assert fp32["metrics"]["macro_f1"] == pytest.approx(reference["macro_f1"], abs=1e-3)
    assert fp32["metrics"]["agreement"] == 100.0
    assert int8["mode"] == "dynamic" and int8["calibration_samples"] == 0
    assert int8["float_layers"] == []  # text: every MatMul in int8 by default
    count_of(int8["metrics"]["top1"], 12)  # a whole number of the 12 test texts
    assert "student.int8.onnx" in out
