"""Callbacks: every event in order, stopping on request, and early stopping that survives a resume."""

import io

import pytest
import torch
from pydantic import ValidationError
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from distill.distiller import Distiller
from distill.errors import ConfigError, DistillError
from distill.tasks import ClassificationTask
from distill.train import TrainConfig, Trainer, load_checkpoint
from distill.train.callbacks import CALLBACKS, Callback, EarlyStopping
from helpers.torchrun import torchrun


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())


def distiller():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    return Distiller(student, ClassificationTask())


def make_trainer(run_dir, hooks=(), **cfg):
    """A trainer with ``hooks`` (Callback objects); ``cfg`` may name recipe ``callbacks``."""
    base = dict(epochs=2, batch_size=16, lr=0.1, progress=False, device="cpu", log_every=2, seed=0)
    return Trainer(
        distiller(), synthetic(64, 0), synthetic(32, 1), TrainConfig(**(base | cfg)),
        run_dir=run_dir, console=Console(file=io.StringIO()), callbacks=list(hooks),
    )  # fmt: skip


class Recorder(Callback):
    def __init__(self, stop_at=None):
        self.events, self.stop_at = [], stop_at

    def on_fit_start(self, trainer):
        self.events.append(("fit_start", trainer.global_step))

    def on_step_end(self, trainer, step, metrics):
        assert "loss" in metrics and "lr" in metrics
        self.events.append(("step", step))
        if step == self.stop_at:
            trainer.request_stop(f"asked at step {step}")

    def on_evaluate_end(self, trainer, metrics):
        self.events.append(("evaluate", metrics["epoch"]))

    def on_checkpoint(self, trainer, tag, path):
        assert path.is_file() and path.parent == trainer.checkpoint_dir
        self.events.append(("checkpoint", tag))

    def on_fit_end(self, trainer, summary):
        self.events.append(("fit_end", summary["steps"]))


def test_a_callback_sees_every_event_in_order(tmp_path):
    rec = Recorder()
    make_trainer(tmp_path, [rec]).fit()
    steps = lambda a, b: [("step", s) for s in range(a, b + 1)]  # noqa: E731
    # epoch 1's evaluation is the first best; epoch 2's is best again only if it improved
    best_again = [("checkpoint", "best")] if rec.events.count(("checkpoint", "best")) == 2 else []
    assert rec.events == [
        ("fit_start", 0),
        *steps(1, 4),
        ("evaluate", 1),
        ("checkpoint", "best"),
        ("checkpoint", "last"),
        *steps(5, 8),
        ("evaluate", 2),
        *best_again,
        ("checkpoint", "last"),
        ("fit_end", 8),
    ]


def test_a_callback_can_stop_training_and_the_run_ends_as_finished(tmp_path):
    rec = Recorder(stop_at=3)
    summary = make_trainer(tmp_path, [rec]).fit()
    assert summary["steps"] == 3 and summary["stopped"] == "asked at step 3"
    assert rec.events[-2:] == [("checkpoint", "last"), ("fit_end", 3)]
    _, last = load_checkpoint(tmp_path / "checkpoints", "last")
    assert last["global_step"] == 3 and last["stop_reason"] == "asked at step 3"
    assert (tmp_path / "model.safetensors").is_file()
    again = make_trainer(tmp_path, [Recorder()]).fit(resume=True)  # a stopped run stays stopped
    assert again["steps"] == 3 and again["stopped"] == "asked at step 3"


def test_on_nonfinite_is_told_before_the_step_is_skipped(tmp_path):
    class Seen(Callback):
        calls = []

        def on_nonfinite(self, trainer, step, loss, grad_norm, action):
            self.calls.append((step, action))

    trainer = make_trainer(tmp_path, [Seen()], on_nonfinite="skip", epochs=1)
    original = trainer.distiller.forward

    def poisoned(batch, **kwargs):
        out = original(batch, **kwargs)
        if trainer.global_step == 1:
            out.loss = out.loss * float("nan")
        return out

    trainer.distiller.forward = poisoned
    trainer.fit()
    assert Seen.calls == [(2, "skip")]


def scripted_evaluation(monkeypatch, top1):
    """The evaluation after epoch e reports top1[e - 1] (a function of the epoch, as after a resume)."""
    monkeypatch.setattr(
        Trainer, "evaluate", lambda self: {"top1": top1[self.epoch - 1], "samples": 32.0}
    )


SCRIPT = [0.5, 0.6, 0.6, 0.55, 0.5, 0.5, 0.5, 0.5]  # no improvement after epoch 2


def early(**options):
    return [{"name": "early_stopping", "options": {"metric": "top1", "patience": 2} | options}]


def test_early_stopping_stops_after_patience_evaluations_without_improvement(tmp_path, monkeypatch):
    scripted_evaluation(monkeypatch, SCRIPT)
    summary = make_trainer(tmp_path / "a", epochs=8, callbacks=early()).fit()
    # best 0.6 at epoch 2; epochs 3 and 4 do not beat it: stopped after epoch 4 (4 steps each)
    assert summary["steps"] == 16 and len(summary["history"]) == 4
    assert "early_stopping: top1" in summary["stopped"]
    assert (tmp_path / "a" / "model.safetensors").is_file()
    # min_delta: 0.6 is not 0.15 better than 0.5, so epoch 1 stays the best and epoch 3 ends it
    summary = make_trainer(tmp_path / "b", epochs=8, callbacks=early(min_delta=0.15)).fit()
    assert summary["steps"] == 12
    # mode min: epoch 1's 0.5 stays the best (0.5 again is no improvement); patience 4 ends epoch 5
    summary = make_trainer(tmp_path / "c", epochs=8, callbacks=early(mode="min", patience=4)).fit()
    assert summary["steps"] == 20


def test_early_stopping_resumes_where_an_uninterrupted_run_stops(tmp_path, monkeypatch):
    scripted_evaluation(monkeypatch, SCRIPT)
    full = make_trainer(tmp_path / "a", epochs=8, callbacks=early(), deterministic=True)
    summary = full.fit()
    assert summary["steps"] == 16
    # interrupted in epoch 4, one evaluation without improvement counted
    part = make_trainer(tmp_path / "b", epochs=8, callbacks=early(), deterministic=True)
    assert part.fit(stop_after=14)["steps"] == 14
    _, last = load_checkpoint(tmp_path / "b" / "checkpoints", "last")
    assert last["callbacks"] == [{"name": "EarlyStopping", "state": {"best": 0.6, "bad": 1}}]
    resumed = make_trainer(tmp_path / "b", epochs=8, callbacks=early(), deterministic=True)
    again = resumed.fit(resume=True)
    assert again["steps"] == 16 and again["history"] == summary["history"]
    a, b = full.distiller.student.state_dict(), resumed.distiller.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_recipe_callbacks_are_validated():
    with pytest.raises(ValidationError, match="unknown callback 'early_stoping'.*early_stopping"):
        TrainConfig(callbacks=[{"name": "early_stoping"}])
    with pytest.raises(ValidationError, match="has no option 'patient'"):
        TrainConfig(callbacks=[{"name": "early_stopping", "options": {"patient": 2}}])
    with pytest.raises(ValidationError, match="Extra inputs"):
        TrainConfig(callbacks=[{"name": "early_stopping", "patience": 2}])
    with pytest.raises(ConfigError, match="patience 0"):
        EarlyStopping(patience=0)
    with pytest.raises(ConfigError, match="mode 'maximum'"):
        EarlyStopping(mode="maximum")


def test_an_unknown_metric_is_named_with_the_known_ones(tmp_path):
    cb = EarlyStopping(metric="acc")
    with pytest.raises(DistillError, match=r"'acc' is not among .*top1"):
        make_trainer(tmp_path, [cb], epochs=1).fit()


def test_a_plugin_registers_its_own_callback(tmp_path, monkeypatch):
    class Count(Callback):
        def __init__(self, every: int = 1):
            self.steps = 0

        def on_step_end(self, trainer, step, metrics):
            self.steps += 1

    monkeypatch.setitem(CALLBACKS._items, "count_steps", Count)
    monkeypatch.setitem(CALLBACKS._meta, "count_steps", {})
    trainer = make_trainer(
        tmp_path, epochs=1, callbacks=[{"name": "count_steps", "options": {"every": 2}}]
    )
    trainer.fit()
    assert trainer.callbacks.items[0].steps == 4


DDP_SCRIPT = """
import io, sys
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset
from distill.distiller import Distiller
from distill.tasks import ClassificationTask
from distill.train import TrainConfig, Trainer
from distill.train.callbacks import Callback

class StopOnRankOne(Callback):
    def on_step_end(self, trainer, step, metrics):
        if trainer.dist.rank == 1 and step == 3:
            trainer.request_stop("rank 1 asked")

torch.set_num_threads(1)
x = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
data = TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())
torch.manual_seed(0)
student = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
cfg = TrainConfig(epochs=2, batch_size=16, lr=0.1, progress=False, device="cpu", seed=0)
trainer = Trainer(Distiller(student, ClassificationTask()), data, data, cfg, run_dir=sys.argv[1],
                  console=Console(file=io.StringIO()), callbacks=[StopOnRankOne()])
summary = trainer.fit()
print(f"rank {trainer.dist.rank} steps {summary['steps']} stopped {summary.get('stopped')}", flush=True)
"""


@pytest.mark.integration
def test_a_stop_one_rank_asks_for_stops_every_rank(tmp_path):
    proc = torchrun(tmp_path, "stop.py", DDP_SCRIPT, [str(tmp_path / "run")])
    assert "rank 0 steps 3 stopped a callback on another rank asked to stop" in proc.stdout
    assert "rank 1 steps 3 stopped rank 1 asked" in proc.stdout
