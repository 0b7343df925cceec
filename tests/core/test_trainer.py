"""Trainer: artefacts, exact resume, LR schedule, NaN guard, checkpoints, scratch training."""

import io
import json
import math
from itertools import pairwise

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from distill.distiller import Distiller, Term
from distill.errors import DistillError
from distill.losses import KDLoss
from distill.tasks import ClassificationTask
from distill.train import (
    TrainConfig,
    Trainer,
    load_checkpoint,
    load_student_weights,
)
from distill.train import trainer as trainer_module
from distill.train.checkpoint import CheckpointStore
from distill.train.optim import lr_at

PIXELS = 16  # images are (1, 4, 4)


@pytest.fixture(autouse=True)
def restore_global_torch_state(monkeypatch):
    """Trainer(deterministic=True) flips process-wide switches; restore them for other tests.

    One intra-op thread: these models are tiny, and extra threads only contend on a shared machine.
    """
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    deterministic = torch.are_deterministic_algorithms_enabled()
    rng = torch.get_rng_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    torch.set_rng_state(rng)


def synthetic(n, seed):
    """Random images; the label is the sign of the image mean (learnable by a linear model)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    return TensorDataset(x, y)


def oracle_teacher():
    """A hand-set teacher that computes the label rule exactly (logits -k*mean, +k*mean)."""
    lin = nn.Linear(PIXELS, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([-torch.ones(PIXELS), torch.ones(PIXELS)]) * (4.0 / PIXELS))
        lin.bias.zero_()
    return nn.Sequential(nn.Flatten(), lin)


def mlp_student(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(PIXELS, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2)
    )


def kd_distiller(dropout=0.0):
    return Distiller(
        mlp_student(dropout),
        ClassificationTask(),
        teacher=oracle_teacher(),
        terms=[Term(KDLoss(2.0), weight=0.5)],
        task_weight=0.5,
    )


def quiet():
    return Console(file=io.StringIO())


def config(**overrides):
    base = dict(epochs=3, batch_size=16, lr=0.1, progress=False, device="cpu", log_every=2, seed=0)
    base.update(overrides)
    return TrainConfig(**base)


def read_events(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def states_equal(a, b):
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- (a) artefacts
def test_tiny_run_writes_artefacts_and_learns(tmp_path):
    run_dir = tmp_path / "run"
    distiller = kd_distiller()
    val = synthetic(256, seed=1)
    before = ClassificationTask().evaluate(distiller.student, [val.tensors])["top1"]
    trainer = Trainer(
        distiller, synthetic(128, seed=0), val, config(), run_dir=run_dir, console=quiet()
    )
    summary = trainer.fit()

    store = CheckpointStore(run_dir / "checkpoints")
    assert store.has("last") and store.has("best")
    assert (run_dir / "model.safetensors").is_file()  # the finished student, a plain state dict
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["steps"] == summary["steps"] == 3 * 128 // 16
    assert len(on_disk["history"]) == 3 and on_disk["best"]["top1"] == max(
        h["top1"] for h in on_disk["history"]
    )

    events = read_events(run_dir)
    train = [e for e in events if e["event"] == "train"]
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in train] == list(range(2, 25, 2))
    assert all({"loss", "task", "kd", "acc", "lr"} <= set(e) for e in train)
    assert all(math.isfinite(e["loss"]) for e in train)
    assert [e["epoch"] for e in evals] == [1, 2, 3]
    assert {"top1", "nll", "ece", "agreement"} <= set(evals[-1])

    final = evals[-1]["top1"]
    # chance is 50 % (+-3 % on 256 samples); this rule is learnt to ~85 % in 24 steps
    assert final > 70.0 and final > before + 15, (
        f"accuracy {final} did not beat chance; started at {before}"
    )
    assert summary["last"]["top1"] == final

    # 'last' holds the final student; 'best' loads into a fresh student
    fresh = mlp_student(seed=123)
    state = load_student_weights(run_dir, fresh, tag="last")
    assert state["global_step"] == 24 and state["epoch"] == 3
    assert states_equal(fresh, distiller.student)
    load_student_weights(run_dir, fresh, tag="best")
    assert ClassificationTask().evaluate(fresh, [val.tensors])["top1"] == pytest.approx(
        on_disk["best"]["top1"]
    )


class CountingTeacher(nn.Module):
    """The oracle teacher, counting the samples it has seen."""

    def __init__(self):
        super().__init__()
        self.model, self.seen = oracle_teacher(), 0

    def forward(self, x):
        self.seen += len(x)
        return self.model(x)


def test_teacher_predictions_are_worked_out_once_per_evaluation_set():
    """TeacherPredictions: the same agreement as running the teacher, without running it again on the
    batches it has seen; a loader with other targets runs it again and replaces what was stored."""
    from distill.tasks.base import TeacherPredictions

    task, student = ClassificationTask(), mlp_student(seed=3)
    val, other = synthetic(96, seed=1).tensors, synthetic(64, seed=2).tensors
    batches = [(val[0][i : i + 32], val[1][i : i + 32]) for i in range(0, 96, 32)]
    plain = task.evaluate(student, batches, oracle_teacher())
    teacher = CountingTeacher()
    cache = TeacherPredictions(teacher)
    assert task.evaluate(student, batches, cache) == plain and teacher.seen == 96
    assert task.evaluate(student, batches, cache) == plain and teacher.seen == 96  # not run again
    assert 0 < plain["agreement"] < 100  # the untrained student agrees on some samples only
    with torch.no_grad():
        flipped = [(x, y) for x, y in batches[:2]] + [(-batches[2][0], 1 - batches[2][1])]
    want = task.evaluate(student, flipped, oracle_teacher())
    assert task.evaluate(student, flipped, cache) == want and teacher.seen == 96 + 32
    assert task.evaluate(student, [other], cache) == task.evaluate(
        student, [other], oracle_teacher()
    )
    assert teacher.seen == 96 + 32 + 64 and len(cache.top1) == 1


def test_trainer_runs_the_teacher_over_the_validation_set_once(tmp_path):
    counting = CountingTeacher()
    distiller = Distiller(
        mlp_student(), ClassificationTask(), counting, [Term(KDLoss(2.0), weight=0.5)], 0.5
    )
    val = synthetic(64, seed=1)
    trainer = Trainer(
        distiller, synthetic(128, seed=0), val, config(), run_dir=tmp_path, console=quiet()
    )
    trainer.fit()
    # every training step, setup's example batch, and the validation set in epoch 1 only (not 3 x 64)
    assert counting.seen == 3 * 128 + 16 + 64
    evals = [e for e in read_events(tmp_path) if e["event"] == "eval"]
    assert len(evals) == 3
    plain = ClassificationTask().evaluate(trainer.final_student, [val.tensors], oracle_teacher())
    assert evals[-1]["agreement"] == pytest.approx(plain["agreement"])


def test_a_validation_dataloader_given_by_the_caller_runs_the_teacher_every_time(tmp_path):
    """A caller's DataLoader may shuffle: predictions stored by batch would meet other samples."""
    from torch.utils.data import DataLoader

    counting = CountingTeacher()
    distiller = Distiller(
        mlp_student(), ClassificationTask(), counting, [Term(KDLoss(2.0), weight=0.5)], 0.5
    )
    val = DataLoader(synthetic(64, seed=1), batch_size=1, shuffle=True)
    trainer = Trainer(
        distiller, synthetic(128, seed=0), val, config(), run_dir=tmp_path, console=quiet()
    )
    trainer.fit()
    assert counting.seen == 3 * 128 + 16 + 3 * 64


# --------------------------------------------------------------------------- (b) resume
def noise_augment(x, g):
    return x + 0.3 * torch.randn(x.shape, generator=g) * (
        torch.rand(x.shape[0], 1, 1, 1, generator=g) > 0.5
    )


RESUME_CASES = {
    "plain": dict(dropout=0.0, augment=None),
    "dropout": dict(dropout=0.3, augment=None),
    "dropout+augment": dict(dropout=0.3, augment=noise_augment),
}
# 64 samples / batch 16 = 4 steps per epoch, 12 in all; step 6 is in the middle of epoch 2
RESUME_CFG = dict(epochs=3, deterministic=True, checkpoint_every=1, warmup_epochs=0.5)


def _train(run_dir, case, resume=False, stop_after=None, **cfg):
    distiller = kd_distiller(case["dropout"])
    trainer = Trainer(
        distiller,
        synthetic(64, seed=0),
        synthetic(32, seed=1),
        config(**RESUME_CFG, **cfg),
        run_dir=run_dir,
        augment=case["augment"],
        console=quiet(),
    )
    summary = (
        trainer.fit(resume=resume, stop_after=stop_after)
        if stop_after
        else trainer.fit(resume=resume)
    )
    return distiller, summary


class Crash(Exception):
    pass


def _crash_at_step_6(run_dir, case, monkeypatch, **cfg):
    """Train ``case`` into ``run_dir`` until the trainer dies at global step 6 (a simulated crash)."""
    original = trainer_module.Trainer._train_step

    def crash(self, *args, **kwargs):
        if self.global_step == 6:
            raise Crash
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "_train_step", crash)
    with pytest.raises(Crash):
        _train(run_dir, case, **cfg)
    monkeypatch.setattr(trainer_module.Trainer, "_train_step", original)


@pytest.mark.parametrize("name", list(RESUME_CASES))
def test_resume_after_crash_is_bit_exact(tmp_path, monkeypatch, name):
    case = RESUME_CASES[name]
    full, _ = _train(tmp_path / "a", case)
    _crash_at_step_6(tmp_path / "b", case, monkeypatch)
    _, last = load_checkpoint(tmp_path / "b" / "checkpoints", "last")
    assert (last["global_step"], last["epoch"], last["epoch_step"]) == (6, 1, 2)

    resumed, summary = _train(tmp_path / "b", case, resume=True)
    assert summary["steps"] == 12
    assert states_equal(resumed.student, full.student)
    if name == "dropout+augment":  # sanity: the comparison can fail (the seed matters)
        other, _ = _train(tmp_path / "c", case, seed=1)
        assert not states_equal(other.student, full.student)


def test_resume_after_stop_after_is_bit_exact(tmp_path):
    """``fit(stop_after=k)`` interrupts without touching the schedule; resuming finishes the same run."""
    case = RESUME_CASES["dropout+augment"]
    full, _ = _train(tmp_path / "a", case)
    stopped, summary = _train(tmp_path / "b", case, stop_after=6)
    assert summary["steps"] == 6
    _, last = load_checkpoint(tmp_path / "b" / "checkpoints", "last")
    assert (last["global_step"], last["epoch"], last["epoch_step"]) == (6, 1, 2)
    resumed, summary = _train(tmp_path / "b", case, resume=True)
    assert summary["steps"] == 12
    assert states_equal(resumed.student, full.student)


def test_resume_inside_an_ultralytics_style_warmup_is_bit_exact(tmp_path, monkeypatch):
    """Bias lr, beta1 and the per-epoch schedule are functions of the step: a crash mid-warm-up resumes
    to the same weights (and the options change the run: the comparison can fail)."""
    case = RESUME_CASES["plain"]
    ultra = dict(
        optimizer="adamw",
        lr=0.01,
        momentum=0.937,
        min_warmup_steps=8,
        warmup_bias_lr=0.1,
        warmup_momentum=0.8,
        schedule_unit="epoch",
    )
    full, _ = _train(tmp_path / "a", case, **ultra)
    _crash_at_step_6(tmp_path / "b", case, monkeypatch, **ultra)
    resumed, summary = _train(tmp_path / "b", case, resume=True, **ultra)
    assert summary["steps"] == 12 and states_equal(resumed.student, full.student)
    plain, _ = _train(tmp_path / "c", case, optimizer="adamw", lr=0.01, momentum=0.937)
    assert not states_equal(plain.student, full.student)
    # logged every 2 steps (steps 1, 3, ..., 11): 8 warm-up steps rise to each epoch's cosine value
    lrs = [r["lr"] for r in read_events(tmp_path / "a") if r["event"] == "train"]
    per_epoch = [0.01 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]
    expected = [per_epoch[s // 4] * min(1.0, (s + 1) / 8) for s in range(1, 12, 2)]
    assert lrs == pytest.approx(expected)


def test_resume_after_max_steps_constant_lr_is_bit_exact(tmp_path):
    case = RESUME_CASES["dropout+augment"]
    full, _ = _train(tmp_path / "a", case, schedule="constant")
    stopped, summary = _train(tmp_path / "b", case, schedule="constant", max_steps=6)
    assert summary["steps"] == 6
    assert not states_equal(stopped.student, full.student)
    resumed, summary = _train(tmp_path / "b", case, resume=True, schedule="constant")
    assert summary["steps"] == 12
    assert states_equal(resumed.student, full.student)


def test_max_steps_spans_the_whole_schedule(tmp_path):
    """max_steps is the run's length: the cosine schedule ends at it (use fit(stop_after=...) to interrupt)."""
    case = RESUME_CASES["plain"]
    _train(tmp_path / "b", case, max_steps=6)
    records = [
        json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    lrs = [r["lr"] for r in records if r["event"] == "train"]
    assert records[-1]["step"] == 6 and lrs[-1] < 0.2 * max(
        lrs
    )  # a 12-step cosine would still be at ~0.6


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    case = RESUME_CASES["plain"]
    fresh, _ = _train(tmp_path / "a", case)
    resumed, summary = _train(tmp_path / "b", case, resume=True)
    assert summary["steps"] == 12
    assert states_equal(resumed.student, fresh.student)


# --------------------------------------------------------------------------- (c) lr_at
def test_lr_linear_warmup_then_cosine():
    cfg = TrainConfig(lr=0.4, schedule="cosine")
    total, warmup = 100, 10
    lrs = [lr_at(s, total, warmup, cfg) for s in range(total)]
    # warm-up: lr * (s + 1) / warmup, linear, reaching lr at its last step
    for s in range(warmup):
        assert lrs[s] == pytest.approx(0.4 * (s + 1) / warmup)
    assert lrs[warmup - 1] == pytest.approx(0.4)
    steps = [b - a for a, b in pairwise(lrs[:warmup])]
    assert max(steps) == pytest.approx(min(steps))
    # cosine: starts at lr, decreases monotonically, ends near 0
    assert lrs[warmup] == pytest.approx(0.4)
    assert all(b <= a for a, b in pairwise(lrs[warmup:]))
    mid = warmup + (total - warmup) // 2
    assert lrs[mid] == pytest.approx(0.2)
    assert 0 < lrs[-1] < 1e-3 * 0.4


def test_lr_constant_and_constant_with_warmup():
    cfg = TrainConfig(lr=0.1, schedule="constant")
    assert [lr_at(s, 50, 0, cfg) for s in range(50)] == [0.1] * 50
    assert lr_at(0, 50, 4, cfg) == pytest.approx(0.025)
    assert lr_at(3, 50, 4, cfg) == pytest.approx(0.1)
    assert lr_at(20, 50, 4, cfg) == 0.1


def test_lr_onecycle():
    cfg = TrainConfig(lr=1.0, schedule="onecycle")
    total = 10_000
    lrs = [lr_at(s, total, 0, cfg) for s in range(total)]
    warmup = int(0.3 * total)  # default: 30 % warm-up
    assert lrs[0] == pytest.approx(1.0 / 25, rel=1e-2)
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == warmup - 1
    assert all(b > a for a, b in pairwise(lrs[:warmup]))
    assert lrs[-1] < 1e-5 and lrs[-1] >= 1.0 / 25 / 1e4


# --------------------------------------------------------------------------- (d) NaN guard
class NaNAfter(nn.Module):
    def __init__(self, calls):
        super().__init__()
        self.calls, self.left = 0, calls

    def forward(self, student, teacher):
        self.calls += 1
        value = (student - teacher).pow(2).mean()
        return value * float("nan") if self.calls > self.left else value


def test_nan_loss_raises_naming_step(tmp_path):
    distiller = Distiller(
        mlp_student(),
        ClassificationTask(),
        teacher=oracle_teacher(),
        terms=[Term(NaNAfter(2), name="bad")],
    )
    trainer = Trainer(
        distiller,
        synthetic(64, 0),
        None,
        config(checkpoint_every=1),
        run_dir=tmp_path,
        console=quiet(),
    )
    with pytest.raises(DistillError, match=r"loss became nan at step 3\b") as info:
        trainer.fit()
    assert "bad=nan" in str(info.value)
    # step 3 (1-based, as in metrics.jsonl) is the first bad one; the last good checkpoint holds the
    # two finite steps
    _, state = load_checkpoint(tmp_path / "checkpoints", "last")
    assert state["global_step"] == 2


# --------------------------------------------------------------------------- (f) scratch
def test_scratch_training(tmp_path):
    distiller = Distiller(mlp_student(), ClassificationTask())
    trainer = Trainer(
        distiller,
        synthetic(128, 0),
        synthetic(256, 1),
        config(optimizer="adamw", lr=0.03),
        run_dir=tmp_path,
        console=quiet(),
    )
    summary = trainer.fit()
    assert summary["steps"] == 24
    assert summary["last"]["top1"] > 75.0  # chance is 50 %
    assert "agreement" not in summary["last"]
    train = [e for e in read_events(tmp_path) if e["event"] == "train"]
    assert train and all("kd" not in e and "task" in e for e in train)
    # the task loss went down
    assert train[-1]["task"] < train[0]["task"]
