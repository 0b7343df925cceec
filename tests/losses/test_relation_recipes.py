"""The shipped Fashion-MNIST recipes of AT, SP, CC, RKD, PKT, NST, FSP and AB build with the real models
(taps, ``build()`` connectors and heads) and train two steps end to end on a tiny fake dataset; the
two-stage methods (FSP, AB) hand over from the distillation loss to the task by their schedules."""

from __future__ import annotations

import pytest
import torch

from conftest import fake_fashion_mnist as _fake_data
from distill.config.build import build, make_trainer
from distill.config.load import load_recipe
from distill.schedules import weight_at
from distill.taps import FeatureTaps

METHODS = ["at", "sp", "cc", "rkd", "pkt", "nst", "fsp", "ab"]
WITH_PARTS = {"cc", "fsp", "ab"}  # trainable heads/connectors built from the example batch


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


@pytest.mark.parametrize("method", METHODS)
def test_recipe_trains_two_steps(method, tmp_path):
    recipe = _recipe(method, tmp_path)
    assert [t.loss for t in recipe.distill.terms] == [method]  # cross-entropy + the method, no KD
    built = build(recipe, data=(_fake_data(32, 0), _fake_data(16, 1)))
    before = {k: v.clone() for k, v in built.student.state_dict().items()}
    trainer = make_trainer(built, run_dir=tmp_path / "run")
    trainer.fit()
    assert trainer.global_step == 2
    after = built.student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the student did not train"
    losses = built.distiller.trainable().losses
    extra = [p for p in losses.parameters() if p.requires_grad]
    if method in WITH_PARTS:
        assert extra, f"{method}: its connectors/head were not built"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in extra)
        assert not any(k.startswith("losses") for k in built.student.state_dict())
    else:
        assert not extra
    batch = next(iter(built.train_data.loader(16)))
    with torch.no_grad():  # every weighted term finite and on a sane scale (random teacher)
        step = built.distiller(built.distiller.task.split(batch), epoch=0.0)
    assert torch.isfinite(step.loss) and float(step.parts[method]) < 1e4, step.parts


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
