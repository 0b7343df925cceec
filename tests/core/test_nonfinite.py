"""NaN/inf in the loss or the gradients: stop with the last good checkpoint kept, or skip and count."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from distill.distiller import Distiller, Term
from distill.errors import DistillError
from distill.tasks import ClassificationTask
from distill.train import TrainConfig, Trainer, load_checkpoint


class Poison(nn.Module):
    """Multiplies its input by NaN on the given (1-based) training calls: NaN reaches BN statistics."""

    def __init__(self, bad_calls):
        super().__init__()
        self.bad_calls, self.calls = set(bad_calls), 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls in self.bad_calls:
                return x * float("nan")
        return x


def student(bad_calls=()):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        Poison(bad_calls),
        nn.Linear(16, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 2),
    )


class NaNGradient(torch.autograd.Function):
    """Identity forward; NaN gradient backward (a finite loss with broken gradients)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class BadGradientOnCall(nn.Module):
    def __init__(self, call):
        super().__init__()
        self.call, self.calls = call, 0

    def forward(self, student, teacher):
        self.calls += 1
        s = NaNGradient.apply(student) if self.calls == self.call else student
        return (s - teacher).pow(2).mean()


def data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 4, 4, generator=g)
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())


def teacher():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))


def run(tmp_path, model, terms=(), **cfg):
    base = dict(epochs=2, batch_size=16, lr=0.05, progress=False, device="cpu", log_every=1)
    base.update(cfg)
    distiller = Distiller(
        model, ClassificationTask(), teacher=teacher() if terms else None, terms=terms
    )
    trainer = Trainer(
        distiller,
        data(),
        None,
        TrainConfig(**base),
        run_dir=tmp_path,
        console=Console(file=io.StringIO()),
    )
    return trainer, distiller


def events(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == kind]


def test_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer, distiller = run(tmp_path, student(bad_calls={3}), checkpoint_every=1)
    with pytest.raises(
        DistillError, match=r"loss became nan at step 3\b.*on_nonfinite=skip.*--resume"
    ):
        trainer.fit()
    tensors, state = load_checkpoint(tmp_path / "checkpoints", "last")
    assert state["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in tensors.values())
    assert events(tmp_path, "nonfinite")[0]["action"] == "stop"


def test_nan_gradients_with_a_finite_loss_are_caught(tmp_path):
    terms = [Term(BadGradientOnCall(call=2), name="mse")]
    trainer, _ = run(tmp_path, student(), terms=terms)
    with pytest.raises(DistillError, match=r"gradient norm became nan at step 2\b"):
        trainer.fit()


def test_skip_counts_steps_and_leaves_weights_and_statistics_finite(tmp_path):
    trainer, distiller = run(tmp_path, student(bad_calls={2, 5}), on_nonfinite="skip")
    summary = trainer.fit()
    assert summary["skipped_steps"] == 2 and summary["steps"] == 8
    state = distiller.student.state_dict()
    assert all(torch.isfinite(v.float()).all() for v in state.values())  # BN running stats included
    # 1-based like the train records: bad calls 2 and 5 are steps 2 and 5
    assert [e["step"] for e in events(tmp_path, "nonfinite")] == [2, 5]
    assert events(tmp_path, "train")[-1]["skipped_steps"] == 2
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in events(tmp_path, "train"))


def test_skipped_step_changes_nothing(tmp_path):
    """A run whose only poisoned step is the last one ends with the weights of the step before it."""
    trainer, distiller = run(
        tmp_path / "a", student(bad_calls={8}), on_nonfinite="skip", schedule="constant"
    )
    trainer.fit()
    clean, clean_distiller = run(tmp_path / "b", student(), max_steps=7, schedule="constant")
    clean.fit()
    a, b = distiller.student.state_dict(), clean_distiller.student.state_dict()
    for key in b:
        if key.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_too_many_skips_in_a_row_stop(tmp_path):
    trainer, _ = run(
        tmp_path, student(bad_calls=range(3, 20)), on_nonfinite="skip", max_skipped_steps=3
    )
    with pytest.raises(DistillError, match=r"3 non-finite steps in a row \(max_skipped_steps=3"):
        trainer.fit()


def test_skip_counter_survives_resume(tmp_path):
    trainer, _ = run(tmp_path, student(bad_calls={2}), on_nonfinite="skip")
    trainer.fit(stop_after=4)
    again, _ = run(tmp_path, student(), on_nonfinite="skip")
    assert again.fit(resume=True)["skipped_steps"] == 1
