"""Vocabulary mismatch end to end: a teacher with a padded output head distils into a student of the
tokenizer's size (both cut to the tokenizer's length, with a note), and heads that cannot share the
tokenizer are refused in one line naming ``uld`` / sequence-level KD."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.cli import main
from distill.config.lmvocab import slice_padded_heads
from distill.config.load import load_recipe
from distill.errors import ConfigError
from distill.models import build_model
from lm.lm_helpers import corpus

TINY = ["data.options.block_size=16", "data.train_subset=8", "data.test_subset=4",
        "train.batch_size=4", "train.eval_batch_size=4", "train.progress=false", "train.log_every=1"]  # fmt: skip
SMALL_GPT = ["n_layer=1", "n_head=2", "n_embd=16"]


def gpt(role: str, pad: int) -> list[str]:
    return [f"{role}.name=gpt", *(f"{role}.options.{o}" for o in [*SMALL_GPT, f"pad_vocab={pad}"])]


def test_padded_teacher_head_is_sliced_to_the_tokenizer(tmp_path: Path, capsys):
    root = corpus(tmp_path / "corpus")
    args = [f"data.root={root}", *TINY]
    teacher = tmp_path / "teacher"
    assert (
        main(["train", "shakespeare/teacher", *args, *gpt("student", 64), f"output={teacher}"]) == 0
    )
    capsys.readouterr()
    student = tmp_path / "kd"
    code = main(
        [
            "train",
            "shakespeare/kd",
            *args,
            *gpt("teacher", 64),
            f"teacher.weights={teacher}",
            *gpt("student", 0),
            f"output={student}",
        ]  # fmt: skip
    )
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads((student / "summary.json").read_text())
    assert "both cut to vocab_size=" in out and "padded head" in out, out
    logged = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert len(steps) == 2 and all(r["forward_kl"] > 0 for r in steps)
    assert "bpc" in summary["last"]


def test_heads_that_cannot_share_the_tokenizer_are_refused_in_one_line():
    recipe = load_recipe("shakespeare/kd", ["teacher.weights=null"])
    teacher = build_model("gpt", num_classes=84 + 64, n_layer=1, n_head=2, n_embd=16)
    student = build_model("gpt", num_classes=40, n_layer=1, n_head=2, n_embd=16)  # < 84 tokens
    with pytest.raises(ConfigError) as err:
        slice_padded_heads(recipe, student, teacher, 84)
    message = str(err.value)
    assert "\n" not in message and "uld" in message and "sequence-level KD" in message
    assert "distill.terms.0 (forward_kl)" in message


def test_equal_heads_and_non_lm_recipes_are_left_alone():
    recipe = load_recipe("shakespeare/kd", ["teacher.weights=null"])
    same = build_model("gpt", num_classes=84, n_layer=1, n_head=2, n_embd=16)
    assert slice_padded_heads(recipe, same, same, 84) == (recipe, [])
    padded = build_model("gpt", num_classes=84, pad_vocab=64, n_layer=1, n_head=2, n_embd=16)
    sliced, notes = slice_padded_heads(recipe, same, padded, 84)
    assert sliced.distill.terms[0].options["vocab_size"] == 84 and len(notes) == 1
