"""Every LM data mode, and the chunked loss path, resumes exactly: a tiny recipe run stopped after a checkpoint (`stop_after`) and
resumed ends with the same weights and logs the same metrics as the run that was never stopped.

Each run goes through the one assembly path (`build` + `make_trainer`), with a random teacher (built
from the recipe's seed, the same in every process). The stop lands inside a logging window
(`log_every: 3`, stopped after step 5) and inside the second epoch, and for the generating modes on
steps that sample: what a mode keeps between steps (the replay buffer, seq_kd's completions, also
across tokenizers, the top-k cache filled by the first part) and the sampling RNG must come back with
the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.config.build import build, make_trainer
from distill.config.load import load_recipe
from lm.lm_helpers import corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STOP = 5  # of 8 steps: epoch 2, inside the log window of steps 5..6
TINY = ["teacher.weights=null", "data.options.block_size=16", "data.train_subset=16",
        "data.test_subset=4", "train.batch_size=4", "train.eval_batch_size=4", "train.epochs=2",
        "train.progress=false", "train.log_every=3", "train.checkpoint_every=2",
        "student.options.dropout=0.1"]  # fmt: skip
TIMINGS = {
    "time",
    "samples_per_s",
    "generate_s",
    "train_s",
    "step_s",
}  # wall-clock: differ run to run
SAMPLE = "distill.data_mode={mode: %s, lam: 0.5, prompt_tokens: 8%s}"
REPLAY = (
    ", replay_size: 8, replay_ratio: 1.0"  # read by replay only (the schema refuses them elsewhere)
)
MODES = {
    "teacher_forced": ("shakespeare/kd", ["distill.data_mode={mode: teacher_forced}"]),
    "on_policy": ("shakespeare/on_policy", [SAMPLE % ("on_policy", "")]),
    "replay": ("shakespeare/on_policy", [SAMPLE % ("replay", REPLAY)]),
    "seq_kd": ("shakespeare/kd", ["distill.data_mode={mode: seq_kd, prompt_tokens: 8}"]),
    # a teacher of another tokenizer: its completions cross over as text (needs `tokenizers`)
    "seq_kd_bpe": (
        "shakespeare/seq_kd_bpe",
        ["distill.data_mode.prompt_tokens=8", "data.options.vocab_size=300"],
    ),
    "cached": ("shakespeare/cached", []),
    "chunked": ("shakespeare/kd", ["distill.terms.0.chunk_size=7"]),  # the chunked loss path
}


def run(tmp_path: Path, recipe: str, extra: list[str], name: str, **fit) -> Path:
    root = corpus(tmp_path / "corpus")
    overrides = [f"data.root={root}", *TINY, *extra, f"output={tmp_path / name}"]
    if recipe == "shakespeare/cached":
        overrides.append(f"distill.topk_cache.dir={tmp_path / name}-cache")
    built = build(load_recipe(recipe, overrides))
    make_trainer(built).fit(**fit)
    return tmp_path / name


def logged(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def assert_same_run(whole: Path, parts: Path) -> None:
    final, expected = (load_file(str(d / "model.safetensors")) for d in (parts, whole))
    assert final.keys() == expected.keys()
    for key in expected:
        assert torch.equal(final[key], expected[key]), key
    assert logged(parts) == logged(whole)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (parts, whole)]
    assert summaries[0]["history"] == summaries[1]["history"] and summaries[0]["steps"] == 8


@pytest.mark.parametrize("mode", list(MODES))
def test_a_stopped_and_resumed_lm_run_equals_the_uninterrupted_one(tmp_path, mode) -> None:
    if mode == "seq_kd_bpe":
        pytest.importorskip("tokenizers")
    recipe, extra = MODES[mode]
    whole = run(tmp_path, recipe, extra, "whole")
    steps = [r for r in logged(whole) if r["event"] == "train"]
    assert [r["step"] for r in steps] == [3, 6, 8]
    if mode in ("on_policy", "replay"):  # the stop lands among sampled steps
        assert any(0 < r.get("mode_dataset", 1.0) < 1 for r in steps)
    parts = run(tmp_path, recipe, extra, "parts", stop_after=STOP)
    assert json.loads((parts / "summary.json").read_text())["steps"] == STOP
    run(tmp_path, recipe, extra, "parts", resume=True)
    assert_same_run(whole, parts)
