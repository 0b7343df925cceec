"""The shipped Fashion-MNIST recipes of AT, SP, CC, RKD, PKT, NST, FSP and AB build with the real models;
the two-stage methods (FSP, AB) hand over from the distillation loss to the task by their schedules and AB
taps pre-activations. That every recipe trains: tests/test_shipped_recipes_train.py."""

from __future__ import annotations

import pytest
import torch

from distill.config.build import build
from distill.config.load import load_recipe
from distill.schedules import weight_at
from distill.taps import FeatureTaps
from helpers import fake_fashion_mnist as _fake_data


def _recipe(method: str, tmp_path):
    return load_recipe(
        f"fashion_mnist/{method}",
        [
            "teacher.weights=null",
            "train.batch_size=16",
            "train.eval_batch_size=16",
            "train.max_steps=2",
            "train.epochs=1",
            "train.device=cpu",
            "train.progress=false",
            f"output={tmp_path / 'run'}",
        ],
    )


@pytest.mark.parametrize("method", ["fsp", "ab"])
def test_two_stage_recipes_hand_over_by_schedule(method, tmp_path):
    recipe = _recipe(method, tmp_path)
    built = build(recipe, data=(_fake_data(16, 0), _fake_data(16, 1)))
    term = built.distiller.terms[0]
    task_weight = built.distiller.trainable().task_weight
    assert (weight_at(term.weight, 0.0), weight_at(task_weight, 0.0)) == (1.0, 0.0)
    assert weight_at(term.weight, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert weight_at(task_weight, 1.0) == weight_at(task_weight, 5.0) == 1.0
    assert weight_at(term.weight, 5.0) == pytest.approx(0.0, abs=1e-12)


def test_ab_recipe_taps_student_pre_activations():
    """AB needs pre-ReLU student maps; the recipe's taps (conv outputs) do take negative values."""
    recipe = load_recipe("fashion_mnist/ab", ["teacher.weights=null"])
    built = build(recipe, data=(_fake_data(8, 0), _fake_data(8, 1)))
    taps = recipe.distill.terms[0].student
    with torch.no_grad(), FeatureTaps(built.student, taps) as captured:
        built.student(torch.rand(8, 1, 28, 28))
    assert all(float(captured[t].min()) < 0 for t in taps)
