"""The run folder is safe: --overwrite keeps the old run until the new one has a checkpoint, a failed start
leaves nothing behind, one training at a time holds a folder, and SIGINT/SIGTERM stop cleanly.

The signal and concurrency tests run real ``python -m distill train`` processes.
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

from distill.cli import main
from distill.errors import DistillError
from distill.models import build_model
from distill.train.rundir import BACKUP_NAME, LOCK_NAME, RunLock, RunStart
from helpers import tiny_recipe_dict
from helpers.torchrun import torchrun

TIMEOUT_S = 120
SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONWARNINGS": "ignore",
}


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), the lock file aside (it names its holder)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def teacher_file(tmp_path: Path, nan: bool = False) -> Path:
    torch.manual_seed(1)
    model = build_model("cnn", num_classes=10, in_channels=1, channels=[4, 8])
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if nan:
        state = {
            k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
            for k, v in state.items()
        }
    path = tmp_path / ("nan-teacher.safetensors" if nan else "teacher.safetensors")
    save_file(state, str(path))
    return path


def kd_with(teacher: Path) -> list[str]:
    return [
        f"teacher={{name: cnn, options: {{channels: [4, 8]}}, weights: {teacher}}}",
        "distill.terms=[{loss: kd}]",
    ]


@pytest.fixture
def finished(tmp_path, write_recipe, capsys):
    """A finished tiny run: (recipe path, run folder, its files)."""
    run = tmp_path / "run"
    recipe = write_recipe(tiny_recipe_dict(run), "tiny.yaml")
    assert main(["train", str(recipe)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return recipe, run, files(run)


# ------------------------------------------------------------------------------------ --overwrite
@pytest.mark.parametrize(
    "why, overrides",
    [
        ("nan-teacher", "nan"),  # the KD loss is NaN at step 1
        ("overflowing-lr", ["train.lr=1e38"]),  # the weights overflow at step 1, the loss at step 2
    ],
)
def test_overwrite_that_fails_at_the_first_steps_keeps_the_old_run(
    finished, tmp_path, capsys, why, overrides
):
    recipe, run, before = finished
    if overrides == "nan":
        overrides = kd_with(teacher_file(tmp_path, nan=True))
    code = main(["train", str(recipe), *overrides, "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert files(run) == before  # weights, summary, metrics, recipe, checkpoints: byte for byte
    assert not (run / BACKUP_NAME).exists()


def test_overwrite_replaces_the_old_run_once_the_new_one_trains(finished, capsys):
    recipe, run, before = finished
    assert main(["train", str(recipe), "train.seed=7", "--overwrite"]) == 0
    after = files(run)
    assert after.keys() == before.keys()
    assert after["model.safetensors"] != before["model.safetensors"]
    assert b"seed: 7" in after["recipe.yaml"]
    assert not (run / BACKUP_NAME).exists()


def test_a_killed_overwrite_is_finished_by_the_next_start(finished, capsys):
    """A crash between moving the old run aside and the first checkpoint: the next start restores it."""
    recipe, run, before = finished
    with RunStart(run) as start:
        start.begin()
        (run / "metrics.jsonl").write_text("half a new run\n")
        start.committed = True  # as if the process died here: nothing is put back on the way out
    assert (run / BACKUP_NAME).is_dir() and not (run / "checkpoints").exists()
    missing = kd_with(run.parent / "no-such-teacher.safetensors")  # a start that then fails
    code = main(["train", str(recipe), *missing, "--overwrite"])
    assert code == 2
    assert "restored the earlier run" in capsys.readouterr().out
    assert files(run) == before


# ----------------------------------------------------------------------- a failed start leaves nothing
@pytest.mark.parametrize("failure", ["missing-teacher", "nan-at-step-1"])
def test_a_failed_start_leaves_no_folder(tmp_path, write_recipe, capsys, failure):
    run = tmp_path / "new" / "run"
    recipe = write_recipe(tiny_recipe_dict(run), "tiny.yaml")
    teacher = (
        tmp_path / "no-such.safetensors"
        if failure == "missing-teacher"
        else teacher_file(tmp_path, nan=True)
    )
    code = main(["train", str(recipe), *kd_with(teacher)])
    assert code == 2, capsys.readouterr().err
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------------------- the lock
def _hold_lock(run: Path) -> subprocess.Popen:
    """Another process that holds ``run``'s lock until its stdin closes."""
    script = (
        "import sys; from distill.train.rundir import RunLock; "
        f"RunLock({str(run)!r}).acquire(); print('locked', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=ENV,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_locked_folder_is_refused_before_anything_changes(finished, capsys):
    recipe, run, before = finished
    holder = _hold_lock(run)
    try:
        for flags in (["--overwrite"], ["--resume"], []):
            code = main(["train", str(recipe), *flags])
            err = capsys.readouterr().err
            assert code == 2
            assert len(err.strip().splitlines()) == 1, err
            assert f"pid {holder.pid}" in err and "started" in err and "output=" in err, err
            assert files(run) == before
    finally:
        holder.communicate("")
    assert main(["train", str(recipe), "--overwrite"]) == 0  # released when the holder ended


def test_trainer_fit_takes_the_lock(tmp_path):
    from distill.config.build import build, make_trainer
    from distill.config.load import load_recipe

    run = tmp_path / "api-run"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(run)))
    built = build(load_recipe(path))
    trainer = make_trainer(built, run)
    holder = _hold_lock(run)
    try:
        with pytest.raises(DistillError, match=rf"in use by another training \(pid {holder.pid} "):
            trainer.fit()
    finally:
        holder.communicate("")
    assert not (run / "checkpoints").exists()
    with RunLock(run), RunLock(run):  # the same process may take it twice
        pass


def test_two_trainings_started_together_one_trains(tmp_path):
    run = tmp_path / "run"
    recipe = tmp_path / "slow.yaml"
    slow = tiny_recipe_dict(run, student={"name": "cnn", "options": {"channels": [16, 32]}})
    slow["data"]["train_subset"] = 1024
    slow["train"].update(batch_size=16, log_every=1)
    recipe.write_text(yaml.safe_dump(slow))
    procs = [_start(recipe) for _ in range(2)]
    results = [(p, *p.communicate(timeout=TIMEOUT_S)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, err) for p, _, err in results]
    winner = next(p for p, _, _ in results if p.returncode == 0)
    err = next(err for p, _, err in results if p.returncode == 2)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"pid {winner.pid}" in lines[0], err
    steps = _train_steps(run)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 1024 // 16


# ------------------------------------------------------------------------------------ signals
def _start(recipe: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "distill", "train", str(recipe), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        text=True,
    )


def _train_steps(run: Path) -> list[int]:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    events = [json.loads(line) for line in lines if line.endswith("}")]
    return [e["step"] for e in events if e["event"] == "train"]


def _signal_recipe(tmp_path: Path, run: Path) -> Path:
    """Shuffled data, augmentation, dropout and a KD teacher, deterministic; 2 x 48 steps."""
    recipe = tiny_recipe_dict(
        run,
        student={"name": "cnn", "options": {"channels": [8, 16], "dropout": 0.3}},
        teacher={
            "name": "cnn",
            "options": {"channels": [4, 8]},
            "weights": str(teacher_file(tmp_path)),
        },
        distill={"task_weight": 0.5, "terms": [{"loss": "kd", "options": {"temperature": 2.0}}]},
    )
    recipe["data"].update(train_subset=768, augment={"crop_padding": 2, "flip": True})
    recipe["train"].update(epochs=2, batch_size=16, lr=0.05, deterministic=True, log_every=1)
    path = tmp_path / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    tmp = tmp_path_factory.mktemp("reference")
    proc = _start(_signal_recipe(tmp, tmp / "run"))
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    return load_file(str(tmp / "run" / "model.safetensors"))


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_at_a_step_and_resume_is_bit_identical(tmp_path, reference, signum, code):
    run = tmp_path / "run"
    recipe = _signal_recipe(tmp_path, run)
    target = random.Random(int(signum)).randint(3, 30)
    proc = _start(recipe)
    deadline = time.monotonic() + TIMEOUT_S
    while not _train_steps(run) or _train_steps(run)[-1] < target:
        assert proc.poll() is None, f"the run ended before step {target}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"step {target} not reached in {TIMEOUT_S} s"
        time.sleep(0.01)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    manifest = json.loads((run / "checkpoints" / "manifest.json").read_text())
    step = manifest["last"][0]["step"]
    assert target <= step < 96
    assert lines[0] == f"interrupted at step {step}; resume with: distill train {recipe} --resume"
    assert not (run / "model.safetensors").exists()  # an unfinished run hands over no student

    resumed = _start(recipe, "--resume")
    _, err = resumed.communicate(timeout=TIMEOUT_S)
    assert resumed.returncode == 0, err
    final = load_file(str(run / "model.safetensors"))
    assert final.keys() == reference.keys()
    for key in reference:
        assert torch.equal(final[key], reference[key]), key
    assert _train_steps(run) == list(range(1, 97))  # every step logged once


DDP_SCRIPT = """
import io, os, signal, sys
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset
from distill.distiller import Distiller
from distill.errors import TrainingInterrupted
from distill.tasks import ClassificationTask
from distill.train import TrainConfig, Trainer

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
x = torch.randn(256, 1, 4, 4, generator=g)
data = TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())
torch.manual_seed(0)
student = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
config = TrainConfig(epochs=2, batch_size=32, progress=False, device="cpu")
trainer = Trainer(Distiller(student, ClassificationTask()), data, None, config, run_dir=sys.argv[1],
                  console=Console(file=io.StringIO()))
step = trainer._train_step

def signal_rank_1_in_step_5(*args):
    if trainer.dist.rank == 1 and trainer.global_step == 4:
        os.kill(os.getpid(), signal.SIGTERM)
    return step(*args)

trainer._train_step = signal_rank_1_in_step_5
try:
    trainer.fit()
except TrainingInterrupted as err:
    print(f"rank {trainer.dist.rank} stopped at step {err.step} by signal {err.signum}", flush=True)
"""


@pytest.mark.integration
def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    proc = torchrun(
        tmp_path,
        "ddp_signal.py",
        DDP_SCRIPT,
        [str(tmp_path / "run")],
        timeout=TIMEOUT_S,
        env={"PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"},
    )
    for rank in (0, 1):
        assert f"rank {rank} stopped at step 5 by signal 15" in proc.stdout, proc.stdout
    manifest = json.loads((tmp_path / "run" / "checkpoints" / "manifest.json").read_text())
    assert manifest["last"][0]["step"] == 5


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_the_build_of_an_overwrite_keeps_the_old_run(
    finished, capsys, monkeypatch, signum, code
):
    import distill.api

    recipe, run, before = finished
    build = distill.api.build

    def build_then_signal(*args, **kwargs):
        built = build(*args, **kwargs)
        # delivered to this (the main) thread before raise_signal returns: no race with other threads
        signal.raise_signal(signum)
        return built

    monkeypatch.setattr(distill.api, "build", build_then_signal)
    assert main(["train", str(recipe), "--overwrite"]) == code
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "interrupted before the first checkpoint; nothing was kept, the run folder is as it was; "
        f"start again with: distill train {recipe}"
    ]
    assert files(run) == before
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
