"""An on-policy run reports the time spent generating and the time spent training apart: per step in
metrics.jsonl (`generate_s`, `train_s`, `step_s`), in all in summary.json (`time`) and in the model card,
also with gradient accumulation (generation of every micro-batch counts) and across a resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import distill.lm_modes as lm_modes
from distill.cli import main
from lm.lm_helpers import corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAP = 0.05  # seconds each sampling call sleeps on top of its work
TINY = ["teacher.weights=null", "data.options.block_size=16", "data.train_subset=8",
        "data.test_subset=4", "train.batch_size=4", "train.eval_batch_size=4", "train.epochs=2",
        "train.grad_accum_steps=2", "train.progress=false", "train.log_every=1"]  # fmt: skip
PROMPT = "distill.data_mode.prompt_tokens=8"


@pytest.fixture
def slow_sampling(monkeypatch):
    sample = lm_modes.sample_tokens

    def slow(*args, **kwargs):
        time.sleep(NAP)
        return sample(*args, **kwargs)

    monkeypatch.setattr(lm_modes, "sample_tokens", slow)


def train(tmp_path: Path, recipe: str, *extra: str) -> Path:
    root = corpus(tmp_path / "corpus")
    run = tmp_path / recipe.replace("/", "-")
    args = ["train", recipe, f"data.root={root}", *TINY, f"output={run}", *extra]
    assert main(args) == 0
    return run


def test_generation_and_training_time_are_reported_apart(tmp_path, slow_sampling):
    run = train(tmp_path, "shakespeare/on_policy", PROMPT)
    steps = [json.loads(x) for x in (run / "metrics.jsonl").open() if '"train"' in x]
    assert len(steps) == 4
    for r in steps:  # two micro-batches a step, each sampling: their seconds add up
        assert r["generate_s"] >= 2 * NAP
        assert r["train_s"] > 0
        assert r["step_s"] == pytest.approx(r["generate_s"] + r["train_s"], rel=1e-5)
    spent = json.loads((run / "summary.json").read_text())["time"]
    assert spent["generate_s"] == pytest.approx(sum(r["generate_s"] for r in steps), abs=2e-3)
    assert spent["train_s"] == pytest.approx(sum(r["train_s"] for r in steps), abs=2e-3)
    card = (run / "MODEL_CARD.md").read_text()
    assert f"{spent['generate_s']:.1f} s generating samples" in card


def test_a_resumed_run_keeps_counting_and_text_runs_report_no_generation(tmp_path, slow_sampling):
    from distill.config.build import build, make_trainer
    from distill.config.load import load_recipe

    root = corpus(tmp_path / "corpus")
    overrides = [f"data.root={root}", *TINY, PROMPT, f"output={tmp_path / 'run'}"]
    make_trainer(build(load_recipe("shakespeare/on_policy", overrides))).fit(stop_after=3)
    summary = make_trainer(build(load_recipe("shakespeare/on_policy", overrides))).fit(resume=True)
    assert summary["time"]["generate_s"] >= 4 * 2 * NAP  # the 3 steps before the stop count too

    run = train(tmp_path, "shakespeare/kd")
    assert "time" not in json.loads((run / "summary.json").read_text())
    assert "generate_s" not in (run / "metrics.jsonl").read_text()
