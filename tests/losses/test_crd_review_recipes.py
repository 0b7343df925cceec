"""The shipped CRD and ReviewKD recipes build with the real Fashion-MNIST models and train end to end on a
tiny fake data set, through the one Distiller and the one Trainer (no special cases): feature taps,
``build()`` with ``num_samples``, memory banks and fusion modules trained and checkpointed, exact resume.
"""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console
from torch.utils.data import DataLoader

from conftest import fake_fashion_mnist as fake_data
from distill.config.build import build
from distill.config.load import load_recipe
from distill.data.tensor import identity_collate
from distill.losses.crd import CRDLoss
from distill.losses.reviewkd import ReviewKDLoss
from distill.schedules import LinearWarmup
from distill.train import Trainer

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


@pytest.mark.parametrize("name", ["crd", "reviewkd"])
def test_recipe_setup_and_two_steps(name):
    b = built(name)
    distiller = b.distiller
    loader = DataLoader(b.train_data, batch_size=BATCH, collate_fn=identity_collate)
    batches = list(loader)[:2]
    distiller.setup(batches[0], num_samples=len(b.train_data))
    loss = distiller.terms[-1].loss
    if name == "crd":
        assert isinstance(loss, CRDLoss)
        assert loss.memory_student.shape == (N_TRAIN, 128) and loss.negatives == N_TRAIN - 1
        assert loss.embed_student.linear.in_features == 32  # student pool
        assert loss.embed_teacher.linear.in_features == 256  # teacher pool
    else:
        assert isinstance(loss, ReviewKDLoss) and len(loss.fusions) == 5
        assert isinstance(distiller.terms[0].weight, LinearWarmup)
    params = {id(p) for p in distiller.trainable_parameters()}
    assert all(id(p) in params for p in loss.parameters())  # heads / fusion modules train
    assert not any(k.startswith("student.") for k in loss.state_dict())
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.05)
    distiller.train()
    for step, raw in enumerate(batches):
        out = distiller(distiller.task.split(raw), epoch=0.25 + step)
        assert torch.isfinite(out.loss)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        assert out.parts[distiller.trainable().names[-1]].abs() > 0
    # what a run exports is the student alone: no memory banks, no fusion modules
    student_keys = set(distiller.student.state_dict())
    assert not any("memory" in k or "fusions" in k for k in student_keys)


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
