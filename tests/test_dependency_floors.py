"""The versions pyproject.toml declares are ones the code runs on: each API below is used by distill and
appeared in the release named, so a floor under it would let pip install a version that fails at run time."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# package -> (the oldest release with every API distill uses from it, which API and where)
NEEDED = {
    "torch": ((2, 6), "torch.nn.utils.get_total_norm in train/trainer.py"),
    "torchvision": ((0, 21), "the torchvision release paired with torch 2.6"),
    "transformers": (
        (4, 56),
        "the public PreTrainedModel.set_attn_implementation in tasks/text.py",
    ),
    "optuna": ((4, 0), "optuna.storages.journal.JournalFileBackend in tune/storage.py"),
}


def _floor(package: str) -> tuple[int, ...]:
    found = re.findall(rf'"{re.escape(package)}>=([0-9.]+)', PYPROJECT.read_text())
    assert len(found) == 1, (package, found)
    return tuple(int(part) for part in found[0].split("."))


@pytest.mark.parametrize("package", sorted(NEEDED))
def test_declared_floor_covers_the_apis_used(package):
    needed, why = NEEDED[package]
    assert _floor(package) >= needed, f"{package} needs >= {needed} for {why}"


def test_the_apis_exist_in_the_installed_versions():
    import torch

    assert callable(torch.nn.utils.get_total_norm)
    transformers = pytest.importorskip("transformers")
    assert callable(getattr(transformers.PreTrainedModel, "set_attn_implementation", None))
