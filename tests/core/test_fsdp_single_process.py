"""``train.distributed: fsdp`` outside torchrun trains in one process (the same recipe must work there) and
says so once, next to the first progress line, with how to launch a sharded run."""

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


def _fit(tmp_path, distributed: str) -> str:
    torch.manual_seed(0)
    x = torch.randn(16, 4)
    data = TensorDataset(x, (x.sum(1) > 0).long())
    out = io.StringIO()
    config = TrainConfig(
        epochs=1, batch_size=8, device="cpu", warmup_epochs=0, distributed=distributed
    )
    trainer = Trainer(
        Distiller(nn.Linear(4, 2), ClassificationTask()),
        data,
        None,
        config,
        run_dir=tmp_path / distributed,
        console=Console(file=out, width=300),
    )
    trainer.fit()
    return out.getvalue()


@pytest.mark.parametrize("world", [None, "1"])
def test_fsdp_in_a_single_process_trains_and_notes_it(tmp_path, monkeypatch, world):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    if world is not None:
        monkeypatch.setenv("WORLD_SIZE", world)
    lines = _fit(tmp_path, "fsdp").splitlines()
    notes = [line for line in lines if "fsdp" in line]
    assert len(notes) == 1, lines
    assert "single process" in notes[0] and "torchrun" in notes[0]
    assert lines.index(notes[0]) <= 2  # with the first progress lines, before the epochs
    assert (tmp_path / "fsdp" / "summary.json").is_file()


def test_ddp_has_no_such_note(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert "fsdp" not in _fit(tmp_path, "ddp")
