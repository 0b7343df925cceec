"""Text hand-back: a trained hf student saved with save_pretrained + tokenizer; transformers (and
sentence-transformers, when installed) load the folder alone and give the student's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from text_helpers import save_tiny_bert, write_reviews

pytest.importorskip("transformers")

TRAIN = {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "optimizer": "adamw", "lr": 1e-3,
         "progress": False, "device": "cpu", "log_every": 1}  # fmt: skip
TEXTS = ["the film was good fun", "the plot was very dull", "actors"]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    from distill import api

    folder = tmp_path_factory.mktemp("text-handback")
    bert = save_tiny_bert(folder / "bert", layers=2)
    recipe = {
        "name": "text-student",
        "task": "text_classification",
        "data": {
            "name": "text_file",
            "root": str(write_reviews(folder / "reviews", n=16)),
            "options": {"max_length": 12},
        },  # fmt: skip
        "student": {"name": f"hf:{bert}"},
        "train": TRAIN,
        "export": {"handback": True},
        "output": str(folder / "run"),
    }
    (folder / "r.yaml").write_text(yaml.safe_dump(recipe))
    summary = api.train(folder / "r.yaml")
    assert summary["handback"] == str(
        folder / "run" / "hf"
    )  # export.handback: at the end of training
    return folder / "run"


def test_transformers_loads_the_folder_and_gives_the_students_logits(text_run):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from distill import open_run

    folder = text_run / "hf"
    report = json.loads((folder / "handback.json").read_text())
    assert report["format"] == "hf" and report["check"]["ok"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "modules.json"} <= set(
        report["files"]
    )
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    student = open_run(text_run).student
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        got, want = model(**batch).logits, student(**batch).logits
    assert torch.equal(got, want)
    assert model.config.id2label == {0: "neg", 1: "pos"}  # the data's class names
    encoder = AutoModel.from_pretrained(folder)  # the bare encoder, as embedding libraries load it
    assert encoder.config.hidden_size == 16


def test_sentence_transformers_embeds_with_the_students_encoder(text_run):
    st = pytest.importorskip("sentence_transformers")
    from transformers import AutoModel, AutoTokenizer

    folder = text_run / "hf"
    embedded = st.SentenceTransformer(str(folder), device="cpu").encode(
        TEXTS, convert_to_tensor=True
    )
    tokenizer, encoder = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        tokens = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (tokens * mask).sum(1) / mask.sum(1)
    assert torch.allclose(embedded.cpu(), mean, atol=1e-5)


def test_handback_cli_rewrites_the_folder_and_refuses_another_format(text_run, capsys):
    from distill.cli import main

    assert main(["handback", str(text_run)]) == 0
    assert "hf:" in capsys.readouterr().out
    assert main(["handback", str(text_run), "--format", "ultralytics"]) == 2
    assert "hands back as hf, not ultralytics; use --format hf" in capsys.readouterr().err
    assert main(["handback", str(text_run), "--format", "onnx"]) == 2
    assert "unknown hand-back format 'onnx'" in capsys.readouterr().err
