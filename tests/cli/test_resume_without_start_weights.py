"""A run that started from a student's `weights:` (a second stage, such as
`shakespeare/on_policy_stage2` from `runs/shakespeare-kd`) resumes from its own checkpoint: the file it
started from may be gone by then, and the resumed run still ends bit-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from distill import api
from distill.models import build_model
from distill.train.callbacks import Callback
from helpers import tiny_recipe_dict


class Crash(Callback):
    def on_checkpoint(self, trainer, tag, path) -> None:
        if tag == "last" and trainer.global_step == 2:
            raise RuntimeError("killed")


def _recipe(tmp_path: Path, weights: Path, output: str) -> Path:
    recipe = tiny_recipe_dict(tmp_path / output)
    recipe["student"]["weights"] = str(weights)
    recipe["train"].update(checkpoint_every=1, deterministic=True)
    path = tmp_path / f"{output}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_resumed_second_stage_needs_only_its_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(3)
    start = tmp_path / "stage1.safetensors"
    model = build_model("cnn", num_classes=10, in_channels=1, channels=[4, 8])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(start))
    api.train(_recipe(tmp_path, start, "reference"))

    recipe = _recipe(tmp_path, start, "stage2")
    with pytest.raises(RuntimeError, match="killed"):
        api.train(recipe, callbacks=[Crash()])
    start.unlink()  # the first stage's weights are gone
    api.train(recipe, resume=True)

    final = load_file(str(tmp_path / "stage2" / "model.safetensors"))
    expected = load_file(str(tmp_path / "reference" / "model.safetensors"))
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in expected)
