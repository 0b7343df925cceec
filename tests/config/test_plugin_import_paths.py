"""Your own model and data from a recipe or the Python API: ``module:function`` names for a module listed
under ``plugins:`` (found in the current directory or the recipe's folder, no PYTHONPATH), and a run
trained from Python with ``distill.train(Recipe)`` reopened by ``distill eval``."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import distill
from distill.api import train
from distill.config.load import load_recipe
from distill.config.schema import Recipe
from distill.errors import ConfigError

SRC = Path(distill.__file__).resolve().parents[1]
PLUGIN = """
import torch
from torch import nn

from distill.data import TensorDataset


def build_student(num_classes, in_channels, width=8):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * 8 * 8, width), nn.ReLU(), nn.Linear(width, num_classes)
    )


def load_data(split, root=None, n=32):
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()
    return TensorDataset(x, y, num_classes=2, name=f"blobs/{split}")
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh plugin module ``plugin_<id>.py`` in ``tmp_path``, the working directory; ``sys.path``
    (which does not hold ``tmp_path``) is restored after the test."""
    name = f"plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    return name


def recipe_dict(module: str, plugins: list[str] | None = None) -> dict:
    return {
        "name": "mine",
        "plugins": [module] if plugins is None else plugins,
        "data": {"name": f"{module}:load_data", "options": {"n": 32}},
        "student": {"name": f"{module}:build_student", "options": {"width": 4}},
        "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "lr": 0.1},
        "output": "runs/mine",
    }


def test_a_run_trained_from_python_reopens_with_distill_eval(plugin: str, tmp_path: Path) -> None:
    recipe = Recipe.model_validate(recipe_dict(plugin))
    summary = train(recipe)
    assert (tmp_path / "runs" / "mine" / "recipe.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONSAFEPATH": "1", "COLUMNS": "200"}
    done = subprocess.run(  # a new process: only the recipe's plugins list brings the code back
        [sys.executable, "-m", "distill", "eval", "runs/mine"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # the evaluation reopened the trained weights and the plugin's data
    top1 = summary["best"]["top1"]
    assert "top1" in done.stdout and f"{top1:.2f}" in done.stdout, (top1, done.stdout)


def test_an_import_path_needs_its_module_under_plugins(plugin: str, write_recipe) -> None:
    path = write_recipe(recipe_dict(plugin, plugins=[]))
    with pytest.raises(
        ConfigError, match=rf"is not listed under plugins:; add `plugins: \[{plugin}\]`"
    ) as info:
        load_recipe(path)
    assert "\n" not in str(info.value)
    assert plugin not in sys.modules  # nothing was imported


def test_the_recipe_folder_is_importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / f"{name}.py").write_text(PLUGIN)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setattr(sys, "path", list(sys.path))
    import yaml

    path = tmp_path / "project" / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(name)))
    recipe = load_recipe(path)
    assert recipe.student.name == f"{name}:build_student" and recipe.student.options == {"width": 4}


def test_a_missing_function_and_a_bad_option_are_named(plugin: str, write_recipe) -> None:
    data = recipe_dict(plugin)
    data["student"]["name"] = f"{plugin}:build_studnet"
    with pytest.raises(ConfigError, match="has no function 'build_studnet'.*build_student"):
        load_recipe(write_recipe(data))
    data = recipe_dict(plugin)
    data["student"]["options"] = {"widht": 4}
    with pytest.raises(ConfigError, match="widht"):
        load_recipe(write_recipe(data))


def test_an_adapter_typo_is_still_suggested(write_recipe, tmp_path: Path) -> None:
    data = recipe_dict("x")
    data["plugins"], data["data"] = [], {"name": "fashion_mnist"}
    data["student"]["name"] = "torchvison:resnet18"
    with pytest.raises(ConfigError, match="Did you mean 'torchvision'"):
        load_recipe(write_recipe(data))
