"""Shared test factories: the shipped recipes, a tiny fast Fashion-MNIST recipe, fake Fashion-MNIST data.

Importable as ``helpers`` because ``tests/`` is on ``sys.path`` (``pythonpath`` in pyproject's pytest
options); fixtures stay in ``tests/conftest.py``."""

from __future__ import annotations

from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parents[2] / "src" / "distill" / "recipes"


def shipped_recipes() -> list[Path]:
    """Every shipped recipe (``_``-prefixed files are include-only fragments by convention)."""
    return sorted(p for p in RECIPES_DIR.glob("**/*.yaml") if not p.name.startswith("_"))


def recipe_id(path: Path) -> str:
    return str(path.relative_to(RECIPES_DIR).with_suffix(""))


def tiny_recipe_dict(output: Path, **extra: object) -> dict:
    """Fashion-MNIST, 256/128 samples, a 2-stage CNN with 4/8 channels, one epoch: trains in seconds."""
    recipe = {
        "name": "tiny",
        "data": {"name": "fashion_mnist", "train_subset": 256, "test_subset": 128},
        "student": {"name": "cnn", "options": {"channels": [4, 8]}},
        "train": {
            "epochs": 1,
            "batch_size": 64,
            "eval_batch_size": 128,
            "progress": False,
            "device": "cpu",
            "log_every": 2,
        },
        "output": str(output),
    }
    recipe.update(extra)
    return recipe


def fake_fashion_mnist(n: int, seed: int, size: int = 28):
    """``n`` random 1-channel ``size x size`` images with labels 0..9 cycling: Fashion-MNIST's shapes, no data."""
    import torch

    from distill.data.tensor import TensorDataset

    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, size, size, generator=g)
    return TensorDataset(images, torch.arange(n) % 10, num_classes=10, name="fake")


def count_of(percent: float, n: int) -> int:
    """The whole number of ``n`` samples that ``percent`` (0-100) stands for; fails when there is none,
    as when a metric was averaged over batches of unequal size or over the wrong samples."""
    count = percent * n / 100
    assert 0 <= round(count) <= n and abs(count - round(count)) < 0.01, (percent, n, count)
    return round(count)
