"""`shakespeare/on_policy_stage2`: on-policy distillation as a second stage from a kd run. It starts
from that run's student weights, trains on its own samples only, and without the kd run it stops with
one error line naming the missing run before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from distill.cli import main
from distill.config.build import build
from distill.config.load import load_recipe
from distill.export.run import load_student
from lm.lm_helpers import corpus

TINY = ["data.options.block_size=16", "data.train_subset=8", "data.test_subset=4",
        "train.batch_size=4", "train.eval_batch_size=4", "train.progress=false", "train.log_every=1",
        "teacher.weights=null"]  # fmt: skip
STAGE2 = [*TINY, "distill.data_mode.prompt_tokens=8", "train.max_steps=2"]


def test_recipe_is_lambda_one_reverse_kl_from_the_kd_run():
    recipe = load_recipe("shakespeare/on_policy_stage2")
    mode = recipe.distill.data_mode
    assert mode is not None and mode.mode == "on_policy" and mode.lam == 1.0
    assert recipe.distill.task_weight == 0.0
    assert [t.loss for t in recipe.distill.terms] == ["reverse_kl"]
    assert recipe.student.weights == load_recipe("shakespeare/kd").run_dir
    assert recipe.train.max_steps is not None and recipe.train.max_steps < 1000


def test_second_stage_starts_from_the_kd_students_weights(tmp_path: Path, capsys):
    root = corpus(tmp_path / "corpus")
    kd = tmp_path / "kd"
    assert main(["train", "shakespeare/kd", f"data.root={root}", *TINY, f"output={kd}"]) == 0
    overrides = [f"data.root={root}", *STAGE2, f"student.weights={kd}"]
    recipe = load_recipe("shakespeare/on_policy_stage2", [*overrides, f"output={tmp_path / 'op'}"])
    started = build(recipe).student.state_dict()
    trained = load_student(kd).state_dict()
    assert started.keys() == trained.keys()
    assert all(torch.equal(started[k], trained[k]) for k in trained)
    assert (
        main(["train", "shakespeare/on_policy_stage2", *overrides, f"output={tmp_path / 'op'}"])
        == 0
    )
    logged = [json.loads(x) for x in (tmp_path / "op" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    # lambda = 1: every step trains on the student's samples, scored by reverse KL alone
    assert len(steps) == 2 and all(r["mode_student"] == 1.0 and r["reverse_kl"] > 0 for r in steps)
    capsys.readouterr()


def test_missing_kd_run_is_one_error_line(tmp_path: Path, monkeypatch, capsys):
    root = corpus(tmp_path / "corpus")
    monkeypatch.chdir(tmp_path)  # runs/shakespeare-kd resolves here, where it does not exist
    code = main(["train", "shakespeare/on_policy_stage2", f"data.root={root}", *STAGE2,
                 f"output={tmp_path / 'op'}"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "runs/shakespeare-kd" in err[0] and "train it first" in err[0], err
    assert not (tmp_path / "op").exists()
