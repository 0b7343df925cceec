"""Hugging Face causal LMs through the hf: adapter, offline: tiny random Llama and GPT-2 configs saved
in the test, no tokenizer files (the data's own tokenizer), no download."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.config.build import build, make_trainer
from distill.config.load import load_recipe
from distill.errors import DistillError
from distill.models import build_model, student_from_teacher
from distill.tasks import build_task
from lm.lm_helpers import corpus

transformers = pytest.importorskip("transformers")


def _llama(folder: Path, vocab: int = 40) -> Path:
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _gpt2(folder: Path, vocab: int = 40) -> Path:
    config = transformers.GPT2Config(
        vocab_size=vocab, n_embd=16, n_layer=2, n_head=2, n_positions=64
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("make", [_llama, _gpt2])
def test_hf_causal_lm_through_the_task(make, tmp_path: Path):
    folder = make(tmp_path / "lm")
    model = build_model(
        f"hf:{folder}", num_classes=30
    )  # the data's 30 ids fit in the 40-token head
    assert type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))
    assert model.distill_tokenizer is None  # no tokenizer files: the dataset's own tokenizer
    task = build_task("causal_lm")
    task.request(["@hidden_states.1"])
    ids = torch.randint(0, 30, (2, 9))
    out = task.forward(model, task.split({"input_ids": ids}).inputs)
    assert out["logits"].shape == (2, 8, 40) and out["hidden_states.1"].shape == (2, 8, 16)
    # the adapter kept the saved weights: the same logits as the model loaded by transformers itself
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert torch.allclose(out["logits"], reference(ids[:, :-1]).logits, atol=1e-5)


def test_hf_causal_vocabulary_too_small(tmp_path: Path):
    folder = _llama(tmp_path / "lm", vocab=20)
    with pytest.raises(
        DistillError, match="vocabulary of 20 tokens but the data's tokenizer has 30"
    ):
        build_model(f"hf:{folder}", num_classes=30)
    with pytest.raises(DistillError, match="head='lm'"):
        build_model(f"hf:{folder}", num_classes=10, head="lm")


def test_hf_causal_student_from_teacher_trains(tmp_path: Path):
    folder = _llama(tmp_path / "lm", vocab=64)
    teacher = build_model(f"hf:{folder}", num_classes=30)
    student = student_from_teacher(teacher, layers=[0, 2])
    assert student.config.num_hidden_layers == 2
    assert torch.equal(
        student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[2].mlp.up_proj.weight
    )
    root = corpus(tmp_path / "corpus")
    recipe = load_recipe("shakespeare/kd", [
        f"teacher.name=hf:{folder}", "teacher.weights=null", "student.name=from_teacher",
        "student.options={layers: [0, 2]}", f"data.root={root}", "data.options.block_size=16",
        "data.train_subset=8", "data.test_subset=4", "train.batch_size=4", "train.epochs=1",
        "train.progress=false", f"output={tmp_path / 'run'}",
    ])  # fmt: skip
    built = build(recipe)
    summary = make_trainer(built, run_dir=tmp_path / "run").fit()
    assert summary["steps"] == 2
    assert {"nll", "ppl", "bpc", "top1", "agreement"} <= set(summary["last"]), summary["last"]
