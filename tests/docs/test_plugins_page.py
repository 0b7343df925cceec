"""docs/plugins.md's example, run as a new user would: its `my_models.py` and recipe copied from the page,
its teacher trained by the shipped `fashion_mnist/teacher` recipe (tiny), then `distill train`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

from distill.cli import main

PAGE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
TINY = ["data.train_subset=64", "data.test_subset=32", "train.max_steps=1", "train.progress=false"]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_the_pages_module_and_recipe_train_against_the_shipped_teacher(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.delitem(sys.modules, "my_models", raising=False)
    (tmp_path / "my_models.py").write_text(blocks("python")[0])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(next(b for b in blocks("yaml") if "plugins: [my_models]" in b))
    (tmp_path / "data" / "mine").mkdir(parents=True)
    for split, n in (("train", 64), ("test", 32)):
        torch.save(torch.rand(n, 1, 28, 28), tmp_path / f"data/mine/{split}-images.pt")
        torch.save(torch.randint(0, 10, (n,)), tmp_path / f"data/mine/{split}-labels.pt")

    assert main(["train", "fashion_mnist/teacher", *TINY]) == 0
    code = main(["train", str(recipe), "train.max_steps=1", "train.progress=false"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "runs" / "my-student" / "model.safetensors").is_file()
