"""What a run leaves for its readers: files readable like any other file of the run (the umask decides),
evaluations labelled by the training they follow, and one step numbering in messages and metrics.jsonl."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from distill.distiller import Distiller
from distill.errors import DistillError
from distill.io import atomic_write, write_json
from distill.tasks import ClassificationTask
from distill.train import TrainConfig, Trainer


@pytest.fixture
def umask():
    """Set the process umask for one test; the old one comes back afterwards."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_write_follows_the_umask(tmp_path: Path, umask, mask: int) -> None:
    umask(mask)
    write_json(tmp_path / "summary.json", {"a": 1})
    atomic_write(tmp_path / "model.bin", lambda tmp: Path(tmp).write_bytes(b"x"))
    (tmp_path / "plain.txt").write_text("a normal file")
    expected = 0o666 & ~mask
    for name in ("summary.json", "model.bin", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def _data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 4, 4, generator=g)
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())


def _trainer(tmp_path: Path, model: nn.Module, **cfg: object) -> tuple[Trainer, io.StringIO]:
    torch.manual_seed(0)
    out = io.StringIO()
    config = TrainConfig(
        **{"batch_size": 8, "lr": 0.05, "progress": False, "device": "cpu", "log_every": 1, **cfg}
    )
    distiller = Distiller(model, ClassificationTask())
    trainer = Trainer(
        distiller, _data(32), _data(8), config, tmp_path, console=Console(file=out, width=200)
    )
    return trainer, out


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_a_runs_safetensors_files_follow_the_umask(tmp_path: Path, umask, mask: int) -> None:
    """safetensors' writer makes its file private (``0o600``) whatever the umask; checkpoints and
    ``model.safetensors`` must still be readable like the run's other files."""
    umask(mask)
    trainer, _ = _trainer(tmp_path / "run", nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), epochs=1)
    trainer.fit()
    files = [p for p in (tmp_path / "run").rglob("*.safetensors")]
    assert any(p.name == "model.safetensors" for p in files) and len(files) >= 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name


def _records(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_evaluation_mid_epoch_is_labelled_by_progress(tmp_path: Path) -> None:
    # 4 steps an epoch; max_steps=6 stops half-way through epoch 2
    trainer, out = _trainer(
        tmp_path, nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), epochs=3, max_steps=6
    )
    trainer.fit()
    evals = _records(tmp_path, "eval")
    assert [(r["epoch"], r["step"]) for r in evals] == [(1, 4), (1.5, 6)]
    assert isinstance(evals[0]["epoch"], int)  # whole epochs keep their meaning
    console = out.getvalue()
    assert "epoch 1: " in console and "epoch 1.50 (step 6, partial): " in console
    assert console.count("epoch 1: ") == 1


class _NaNOnStep(nn.Module):
    """A linear model whose output is NaN on its ``bad``-th training forward (1-based)."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.linear, self.bad, self.calls = nn.Linear(16, 2), bad, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls == self.bad:
                return y * float("nan")
        return y


def test_nonfinite_step_is_numbered_like_metrics_jsonl(tmp_path: Path) -> None:
    trainer, _ = _trainer(tmp_path / "skip", _NaNOnStep(3), epochs=1, on_nonfinite="skip")
    trainer.fit()
    skipped = [r["step"] for r in _records(tmp_path / "skip", "nonfinite")]
    logged = [r["step"] for r in _records(tmp_path / "skip", "train")]
    assert skipped == [3] and logged == [
        1,
        2,
        4,
    ]  # the gap in the train records is the skipped step

    trainer, _ = _trainer(tmp_path / "stop", _NaNOnStep(1), epochs=1)
    with pytest.raises(DistillError, match=r"loss became nan at step 1\b"):
        trainer.fit()
    assert [r["step"] for r in _records(tmp_path / "stop", "nonfinite")] == [1]
