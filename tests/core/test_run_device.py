"""Where a run trained is never silent: ``train.device: auto`` takes CUDA, then Apple's MPS, then the CPU,
and the run says which on its first progress line and in ``summary.json`` (with PyTorch's version and the
number of processes)."""

from __future__ import annotations

import io
import json

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from distill.distiller import Distiller
from distill.tasks import ClassificationTask
from distill.train import TrainConfig, Trainer, distributed
from distill.train.distributed import DistInfo, pick_device


def test_auto_takes_mps_when_there_is_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed, "_mps_available", lambda: True)
    assert pick_device("auto", DistInfo()) == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto", DistInfo()) == torch.device("cuda")


def test_the_run_records_its_device(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed, "_mps_available", lambda: False)
    torch.manual_seed(0)
    x = torch.randn(16, 4)
    data = TensorDataset(x, (x.sum(1) > 0).long())
    student = nn.Linear(4, 2)
    out = io.StringIO()
    config = TrainConfig(epochs=1, batch_size=8, device="auto", warmup_epochs=0)
    trainer = Trainer(
        Distiller(student, ClassificationTask()),
        data,
        None,
        config,
        run_dir=tmp_path / "run",
        console=Console(file=out, width=200),
    )
    summary = trainer.fit()
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    for record in (summary, on_disk):
        assert record["device"] == "cpu"
        assert record["torch"] == torch.__version__
        assert record["world_size"] == 1
    first = out.getvalue().splitlines()[0]
    assert first.startswith("training on cpu (auto: no usable CUDA or MPS GPU)"), first
    assert f"torch {torch.__version__}, 1 process" in first
