"""SIGKILL a real `distill train` process at random steps, resume it, and get bit-identical weights.

The run uses everything that consumes randomness (shuffled data order, crop/flip augmentation,
dropout, a KD term against a teacher loaded from a file), deterministic mode and a checkpoint every
step, so a kill can land anywhere: in a step, inside a checkpoint write, between the file's rename and
the manifest update, or while metrics are being appended.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from distill.models import build_model

pytestmark = pytest.mark.integration

STEPS = 3 * 384 // 32  # epochs * samples / batch
KILLS = 3
TIMEOUT_S = 120


def _recipe(tmp_path: Path, output: Path) -> Path:
    teacher = tmp_path / "teacher.safetensors"
    if not teacher.is_file():
        torch.manual_seed(1)
        model = build_model("cnn", num_classes=10, in_channels=1, channels=[8, 16])
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(teacher))
    recipe = {
        "name": "kill-test",
        "data": {
            "name": "fashion_mnist",
            "train_subset": 384,
            "test_subset": 128,
            "augment": {"crop_padding": 2, "flip": True},
        },
        "student": {"name": "cnn", "options": {"channels": [4, 8], "dropout": 0.3}},
        "teacher": {"name": "cnn", "options": {"channels": [8, 16]}, "weights": str(teacher)},
        "distill": {"task_weight": 0.5, "terms": [{"loss": "kd", "options": {"temperature": 2.0}}]},
        "train": {
            "epochs": 3,
            "batch_size": 32,
            "eval_batch_size": 128,
            "lr": 0.05,
            "progress": False,
            "device": "cpu",
            "deterministic": True,
            "checkpoint_every": 1,
            "log_every": 1,
        },
        "output": str(output),
    }
    path = tmp_path / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _start(recipe: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "distill", "train", str(recipe), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )


def _step_on_disk(run: Path) -> int:
    try:
        manifest = json.loads((run / "checkpoints" / "manifest.json").read_text())
        return max(e["step"] for e in manifest["last"])
    except (OSError, ValueError, KeyError):
        return -1


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, out
    return out


def test_sigkill_at_random_steps_then_resume_is_bit_identical(tmp_path):
    reference = tmp_path / "reference"
    _finish(_start(_recipe(tmp_path, reference)))

    run = tmp_path / "killed"
    recipe = _recipe(tmp_path, run)
    rng = random.Random(1234)
    targets = sorted(rng.sample(range(1, STEPS - 2), KILLS))
    kills = []
    for i, target in enumerate(targets):
        proc = _start(recipe, *(["--resume"] if i else []))
        deadline = time.monotonic() + TIMEOUT_S
        while _step_on_disk(run) < target:
            assert proc.poll() is None, f"the run ended before step {target}: {proc.stdout.read()}"
            assert time.monotonic() < deadline, f"step {target} not reached in {TIMEOUT_S} s"
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.03))  # land anywhere inside the following step or write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=TIMEOUT_S)
        proc.stdout.close()
        kills.append(_step_on_disk(run))
    out = _finish(_start(recipe, "--resume"))
    assert "resumed" in out
    assert kills == sorted(kills) and kills[0] >= targets[0]

    final, expected = (
        load_file(str(run / "model.safetensors")),
        load_file(str(reference / "model.safetensors")),
    )
    assert final.keys() == expected.keys()
    for key in expected:
        assert torch.equal(final[key], expected[key]), key
    ref_summary = json.loads((reference / "summary.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == ref_summary["steps"] == STEPS
    assert summary["history"] == ref_summary["history"]  # the same evaluations, epoch by epoch

    # no temporaries or orphans left, and no step logged twice
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    steps = [
        json.loads(line)["step"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["event"] == "train"
    ]
    assert steps == list(range(1, STEPS + 1))
