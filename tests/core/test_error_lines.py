"""Errors that used to end in a traceback or in a line that did not name the setting or the fix:
a message over the length cap, safetensors' own write error on a full disk, and a batch that does not
fit in memory at a training step. (Recipe-level cases live in the bad-input catalogue.)"""

from __future__ import annotations

import errno
import io
import os

import pytest
import torch
from rich.console import Console
from safetensors import SafetensorError
from torch import nn
from torch.utils.data import TensorDataset

from distill.cli import err_console, main
from distill.distiller import Distiller
from distill.errors import MAX_MESSAGE, DistillError, one_line
from distill.tasks import ClassificationTask
from distill.train import TrainConfig, Trainer
from distill.train import checkpoint as checkpoint_module
from distill.train import checkpoint_store as store_module

DISK_FULL = (
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
    'device" })'
)


def test_one_line_keeps_the_start_and_the_fix_of_a_long_message():
    message = "teacher weights " + "/very/long/path" * 400 + "; re-save them as .safetensors"
    line = one_line(message)
    assert len(line) <= MAX_MESSAGE and " ... " in line
    assert line.startswith("teacher weights /very") and line.endswith(
        "re-save them as .safetensors"
    )
    assert one_line("short\n  message") == "short message"


@pytest.mark.parametrize("error", [DistillError, OSError])
def test_the_cli_prints_a_5000_character_error_as_one_capped_line(capsys, monkeypatch, error):
    """One such line was 5,124 characters long (a run dir path repeated in a state-dict diff)."""
    from distill import cli

    def command(**kwargs):
        raise error("cannot load /run/" + "deep/" * 1000 + " ; set output=... to a shorter folder")

    monkeypatch.setattr(err_console, "_width", 80)  # soft_wrap: never wrapped, whatever the width
    monkeypatch.setattr(cli, "app", command)
    code = main(["train", "anything.yaml"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert len(lines[0]) <= len("error: ") + MAX_MESSAGE, len(lines[0])
    assert lines[0].endswith("set output=... to a shorter folder")


def raise_disk_full(*args, **kwargs):
    raise SafetensorError(DISK_FULL)


@pytest.mark.parametrize("writer", ["save_model", "checkpoint"])
def test_safetensors_disk_full_is_a_one_line_error(tmp_path, monkeypatch, writer):
    """safetensors raises its own SafetensorError (not OSError) from inside its writer."""
    # save_model writes through checkpoint.py, the store through checkpoint_store.py
    monkeypatch.setattr(checkpoint_module, "save_file", raise_disk_full)
    monkeypatch.setattr(store_module, "save_file", raise_disk_full)
    model = nn.Linear(2, 2)
    with pytest.raises(DistillError) as info:
        if writer == "save_model":
            checkpoint_module.save_model(tmp_path / "model.safetensors", model)
        else:
            checkpoint_module.CheckpointStore(tmp_path / "checkpoints").save("last", model, {})
    message = str(info.value)
    assert "disk is full" in message and "output=" in message and "\n" not in message
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "a partial file was left"


class Greedy(nn.Module):
    """A student whose training forward asks for more memory than there is (as a huge batch would)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                "you tried to allocate 36000000000000 bytes. Error code 12"
            )
        return self.linear(x)


def test_a_step_beyond_memory_names_the_batch_size(tmp_path):
    data = TensorDataset(torch.randn(8, 4), torch.arange(8) % 2)
    config = TrainConfig(epochs=1, batch_size=4, progress=False, device="cpu")
    trainer = Trainer(
        Distiller(Greedy(), ClassificationTask()),
        data,
        data,
        config=config,
        run_dir=tmp_path / "run",
        console=Console(file=io.StringIO()),
    )
    with pytest.raises(DistillError) as info:
        trainer.fit()
    message = str(info.value)
    assert "training step 1" in message and "memory" in message
    assert "train.batch_size" in message and "\n" not in message


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_write_errors_name_the_output_setting(tmp_path, code):
    """A read-only or full run folder (root ignores permissions, so the OS error is made here)."""
    err = checkpoint_module.write_error(OSError(code, os.strerror(code)), tmp_path, "checkpoints")
    assert "output=" in str(err) and str(tmp_path) in str(err)
