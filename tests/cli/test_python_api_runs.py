"""A run trained by a ``Trainer`` built in Python from the user's own modules keeps weights but no
``recipe.yaml``: ``distill eval`` and ``distill export`` refuse it with one line that says so and names
the two ways forward (train it through ``distill.api.train`` with a Recipe, or load its weights)."""

from __future__ import annotations

import io

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from distill.cli import commands, main
from distill.distiller import Distiller
from distill.tasks import ClassificationTask
from distill.train import TrainConfig, Trainer


def _hand_built_run(run_dir) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 4, 4, generator=g)
    data = TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    config = TrainConfig(epochs=1, batch_size=16, progress=False, device="cpu")
    Trainer(
        Distiller(student, ClassificationTask()), data, data, config, run_dir=run_dir,
        console=Console(file=io.StringIO()),
    ).fit()  # fmt: skip


def test_cli_commands_refuse_a_hand_built_trainer_run_and_name_the_fix(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(commands.console, "_width", 300)
    run = tmp_path / "mine"
    _hand_built_run(run)
    assert (run / "model.safetensors").is_file() and not (run / "recipe.yaml").exists()
    for argv in (("eval", str(run)), ("export", str(run))):
        code = main(list(argv))
        _, err = capsys.readouterr()
        lines = err.strip("\n").splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        line = lines[0]
        assert "Traceback" not in err
        for needle in (str(run), "Trainer built in Python", "distill.api.train", "weights:"):
            assert needle in line, (argv, needle, line)
