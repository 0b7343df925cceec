"""Trainer options that must work on CPU: bf16 autocast, gradient clipping, TensorBoard, AdamW + one-cycle."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from distill import ClassificationTask, Distiller, DistillError, KDLoss, Term, TrainConfig, Trainer


def data(n: int = 96, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())


def distiller() -> Distiller:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
    student = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 2))
    return Distiller(
        student,
        ClassificationTask(),
        teacher=teacher,
        terms=[Term(KDLoss(2.0), weight=0.5)],
        task_weight=0.5,
    )


def fit(tmp_path, epochs=2, **cfg):
    d = distiller()
    config = TrainConfig(
        epochs=epochs, batch_size=32, progress=False, device="cpu", log_every=1, **cfg
    )
    summary = Trainer(
        d, data(), data(64, 1), config, run_dir=tmp_path, console=Console(file=io.StringIO())
    ).fit()
    return d, summary


def test_bf16_autocast_trains_and_keeps_float32_weights(tmp_path):
    d, summary = fit(tmp_path, bf16=True)
    assert all(p.dtype == torch.float32 for p in d.student.parameters())
    assert summary["steps"] == 6 and torch.isfinite(torch.tensor(summary["last"]["nll"]))


def test_grad_clip_bounds_the_update(tmp_path, monkeypatch):
    norms = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        total = original(params, max_norm, *a, **k)
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item())
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    fit(tmp_path, grad_clip=1e-3, lr=0.5)
    assert norms and max(norms) <= 1e-3 * 1.0001


def test_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    fit(tmp_path, tensorboard=True)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_adamw_onecycle_learns(tmp_path):
    _, summary = fit(tmp_path, epochs=8, optimizer="adamw", lr=0.05, schedule="onecycle")
    assert summary["history"][0]["top1"] < summary["last"]["top1"]
    assert summary["last"]["top1"] > 75


def test_fit_refuses_to_overwrite_an_existing_run(tmp_path):
    fit(tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}
    with pytest.raises(DistillError, match="resume=True"):
        fit(tmp_path)
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()} == before
