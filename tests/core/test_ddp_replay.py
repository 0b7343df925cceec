"""A replay run (distill.data_mode) on two CPU processes under torchrun (gloo): each rank keeps its own
buffer of samples; a run stopped after a checkpoint and resumed gets every rank's buffer back and ends
with exactly the weights and logged metrics of the run that was not stopped."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers.torchrun import torchrun

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent(
    """
    import io
    import sys

    import torch
    from rich.console import Console

    from distill.distiller import Distiller, OnlineTeacher, Term
    from distill.lm_modes import DataModes, ModeSettings
    from distill.tasks.causal_lm import CausalLMTask
    from distill.train import TrainConfig, Trainer
    from helpers.tiny_lm import TinyLM, TokenData, TokenKL

    run_dir, stop_after, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume"
    torch.set_num_threads(1)
    teacher, student, task = TinyLM(11, seed=1), TinyLM(11, seed=2), CausalLMTask()
    settings = ModeSettings("replay", lam=0.8, prompt_tokens=3, replay_size=6, replay_ratio=0.6)
    source = DataModes(OnlineTeacher(teacher, task), teacher, task, settings)
    distiller = Distiller(student, task, teacher=teacher, terms=[Term(TokenKL(), name="kl")],
                          task_weight=0.5, source=source)
    config = TrainConfig(epochs=2, batch_size=8, lr=0.05, progress=False, seed=0, device="cpu",
                         checkpoint_every=1, log_every=1)
    trainer = Trainer(distiller, TokenData(n=48, length=9), TokenData(n=8, length=9, seed=5),
                      config, run_dir, console=Console(file=io.StringIO()))
    trainer.fit(resume=resume, stop_after=stop_after or None)
    """
)


def run(tmp_path: Path, run_dir: Path, stop_after: int = 0, resume: bool = False) -> None:
    args = [str(run_dir), str(stop_after), "resume" if resume else "fresh"]
    torchrun(tmp_path, "replay_train.py", SCRIPT, args, timeout=300, tests_on_path=True)


def logged(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    timings = ("time", "samples_per_s", "generate_s", "train_s", "step_s")
    return [{k: v for k, v in r.items() if k not in timings} for r in rows]


def test_a_two_process_replay_run_resumes_with_every_ranks_buffer(tmp_path: Path) -> None:
    run(tmp_path, tmp_path / "whole")
    run(tmp_path, tmp_path / "parts", stop_after=4)  # of 12 steps, with replayed steps after it
    buffers = load_file(str(sorted((tmp_path / "parts" / "checkpoints").glob("last-*"))[-1]))
    kept = {k for k in buffers if k.startswith("source.")}
    assert kept == {
        f"source.rank{r}.{name}" for r in (0, 1) for name in ("buffer", "buffer_lengths")
    }
    assert not torch.equal(buffers["source.rank0.buffer"], buffers["source.rank1.buffer"])
    run(tmp_path, tmp_path / "parts", resume=True)
    whole, parts = (
        load_file(str(d / "model.safetensors")) for d in (tmp_path / "whole", tmp_path / "parts")
    )
    assert all(torch.equal(parts[k], whole[k]) for k in whole)
    assert logged(tmp_path / "parts") == logged(tmp_path / "whole")
    steps = [r for r in logged(tmp_path / "whole") if r.get("event") == "train"]
    assert any(r["mode_replay"] for r in steps[4:])  # the resumed part replays from the buffer
