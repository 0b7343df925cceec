"""``train.deterministic``: strict on the CPU; on CUDA, where adaptive average pooling's backward (in every
shipped CNN) has no deterministic kernel, torch is asked to warn instead of raising, and the run says so.
CUDA is faked by setting the trainer's device: only the choice is checked."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from distill.distiller import Distiller
from distill.tasks import ClassificationTask
from distill.train import TrainConfig, Trainer


@pytest.fixture(autouse=True)
def restore_deterministic(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    state = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(state, warn_only=warn_only)


def _trainer(out: io.StringIO) -> Trainer:
    x = torch.randn(8, 4)
    data = TensorDataset(x, (x.sum(1) > 0).long())
    config = TrainConfig(epochs=1, batch_size=4, device="cpu", deterministic=True)
    console = Console(file=out, width=200)
    return Trainer(
        Distiller(nn.Linear(4, 2), ClassificationTask()), data, None, config, console=console
    )


def test_cpu_stays_strict():
    trainer = _trainer(io.StringIO())
    trainer.prepare()
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()


def test_cuda_warns_instead_of_raising_and_says_so():
    out = io.StringIO()
    trainer = _trainer(out)
    trainer.device = torch.device("cuda")
    trainer.prepare()
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert "train.deterministic on CUDA" in out.getvalue()
    assert "adaptive average pooling" in out.getvalue()
