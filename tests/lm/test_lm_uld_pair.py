"""Teacher and student of different tokenizers end to end: a character-level teacher distils into a
byte-level BPE student through ``uld``, each model reading its own ids of the same text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.cli import main
from distill.config.run import open_run
from distill.data import build_dataset
from distill.errors import DistillError
from distill.tasks import build_task
from lm.lm_helpers import corpus

TINY = ["data.options.block_size=16", "data.train_subset=8", "data.test_subset=4",
        "train.batch_size=4", "train.eval_batch_size=4", "train.progress=false", "train.log_every=1"]  # fmt: skip
SMALL = ["n_layer=1", "n_head=2", "n_embd=16"]


def small(role: str) -> list[str]:
    return [f"{role}.name=gpt", *(f"{role}.options.{o}" for o in SMALL)]


def test_paired_rows_hold_the_same_text_in_each_tokenizer(tmp_path: Path):
    pytest.importorskip("tokenizers")
    root = corpus(tmp_path / "corpus")
    data = build_dataset(
        "shakespeare", split="train", root=str(root), block_size=16, tokenizer="bpe",
        vocab_size=300, teacher_tokenizer="char",
    )  # fmt: skip
    assert data.num_classes != data.teacher_num_classes
    for i in (0, 3, len(data) - 1):
        student_text = data.tokenizer.decode(data.input_ids[i].tolist())
        teacher_text = data.teacher_tokenizer.decode(data.teacher_input_ids[i].tolist())
        # 17 characters, the start of the same text the 17 BPE tokens cover
        assert len(teacher_text) == 17 and student_text.startswith(teacher_text)
    batch = build_task("causal_lm").split(data.batch(torch.tensor([0, 1])))
    assert batch.extras["teacher_inputs"]["input_ids"].shape == batch.inputs["input_ids"].shape


def test_char_teacher_distils_into_bpe_student_with_uld(tmp_path: Path, capsys):
    pytest.importorskip("tokenizers")
    root = corpus(tmp_path / "corpus")
    teacher = tmp_path / "teacher"
    args = [f"data.root={root}", *TINY]
    assert (
        main(["train", "shakespeare/teacher", *args, *small("student"), f"output={teacher}"]) == 0
    )
    student = tmp_path / "uld"
    code = main(
        [
            "train",
            "shakespeare/kd",
            *args,
            "data.options.tokenizer=bpe",
            "data.options.vocab_size=300",
            "data.options.teacher_tokenizer=char",
            *small("teacher"),
            f"teacher.weights={teacher}",
            *small("student"),
            "distill.terms.0.loss=uld",
            f"output={student}",
        ]  # fmt: skip
    )
    err = capsys.readouterr().err
    assert code == 0, err
    summary = json.loads((student / "summary.json").read_text())
    assert "bpc" in summary["last"] and "agreement" not in summary["last"]  # one tokenizer needed
    logged = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert len(steps) == 2 and all(0 < r["uld"] <= 2 for r in steps)
    run = open_run(
        student, teacher=True
    )  # reopened later (eval, export): the teacher of its tokenizer
    assert run.teacher is not None and run.teacher.vocab_size == run.train_data.teacher_num_classes
    assert run.student.vocab_size == run.train_data.num_classes != run.teacher.vocab_size


def test_unknown_teacher_tokenizer_is_one_line(tmp_path: Path):
    root = corpus(tmp_path / "corpus")
    with pytest.raises(DistillError, match=r"teacher_tokenizer='words'; use char or bpe$"):
        build_dataset("shakespeare", root=str(root), teacher_tokenizer="words")
