"""The shipped CRD and ReviewKD recipes carry the papers' settings, and CRD trains through the one Trainer
(no special cases) with its memory banks checkpointed: an exact resume. Their two training steps (banks,
heads, fusion modules): tests/test_shipped_recipes_train.py."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from distill.config.build import build
from distill.config.load import load_recipe
from distill.train import Trainer
from helpers import fake_fashion_mnist as fake_data

N_TRAIN, BATCH = 32, 16


def built(name: str):
    overrides = ["teacher.weights=null", f"train.batch_size={BATCH}", "train.device=cpu"]
    recipe = load_recipe(f"fashion_mnist/{name}", overrides)
    return build(recipe, data=(fake_data(N_TRAIN, 0), fake_data(16, 1)))


def test_recipes_use_the_papers_settings():
    crd = load_recipe("fashion_mnist/crd")
    assert [(t.loss, t.weight) for t in crd.distill.terms] == [("kd", 1.0), ("crd", 0.8)]
    assert crd.distill.task_weight == 1.0
    assert (crd.distill.terms[1].student, crd.distill.terms[1].teacher) == ("pool", "pool")
    review = load_recipe("fashion_mnist/reviewkd")
    assert [t.loss for t in review.distill.terms] == ["reviewkd"]  # no kd term (mdistiller)
    weight = review.distill.terms[0].weight
    assert weight.schedule == "linear_warmup" and weight.model_extra["value"] == 1.0
    # 20 of mdistiller's 240 epochs = the same fraction of this recipe's epochs
    assert weight.model_extra["warmup_epochs"] == pytest.approx(review.train.epochs * 20 / 240)


def _fit(name: str, run_dir, **kwargs):
    b = built(name)
    trainer = Trainer(
        b.distiller,
        b.train_data,
        b.test_data,
        config=b.recipe.train.model_copy(update={"epochs": 1, "progress": False, "log_every": 1}),
        run_dir=run_dir,
        console=Console(file=io.StringIO()),
    )
    trainer.fit(**kwargs)
    return b.distiller


def test_crd_through_the_trainer_resumes_exactly(tmp_path):
    """The trainer passes num_samples; banks and Z are checkpointed and negatives follow the reseeded RNG,
    so an interrupted and resumed run equals an uninterrupted one."""
    full = _fit("crd", tmp_path / "full")  # 2 steps
    _fit("crd", tmp_path / "cut", stop_after=1)
    resumed = _fit("crd", tmp_path / "cut", resume=True)
    sa, sb = full.trainable().state_dict(), resumed.trainable().state_dict()
    assert sa.keys() == sb.keys() and any("memory_student" in k for k in sa)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    loss = full.terms[-1].loss
    assert float(loss.z_student) > 0 and loss.memory_student.shape[0] == N_TRAIN
