"""The shipped Fashion-MNIST recipes of VID, FT, OFD, CWD and MGD build with the real models (taps,
projectors, ``build()``) and train two steps end to end on a tiny fake dataset (16 x 16 images, so it
stays fast on a CPU); the loss parts train, are saved with the run and stay out of the student."""

from __future__ import annotations

import pytest
import torch

from conftest import fake_fashion_mnist
from distill.config.build import build, make_trainer
from distill.config.load import load_recipe
from distill.data.tensor import TensorDataset
from distill.train.checkpoint import model_tensors

METHODS = ["vid", "ft", "ofd", "cwd", "mgd"]


def _fake_data(n: int, seed: int) -> TensorDataset:
    return fake_fashion_mnist(n, seed, size=16)


@pytest.mark.filterwarnings("error:ofd:UserWarning")  # OFD's teacher taps are pre-ReLU
@pytest.mark.parametrize("method", METHODS)
def test_recipe_trains_two_steps(method, tmp_path):
    recipe = load_recipe(
        f"fashion_mnist/{method}",
        [
            "teacher.weights=null",
            "train.batch_size=8",
            "train.eval_batch_size=8",
            "train.max_steps=2",
            "train.epochs=1",
            "train.device=cpu",
            "train.progress=false",
            f"output={tmp_path / 'run'}",
        ],
    )
    assert [t.loss for t in recipe.distill.terms] == [method]  # cross-entropy + the method, no KD
    built = build(recipe, data=(_fake_data(16, 0), _fake_data(8, 1)))
    trainer = make_trainer(built, run_dir=tmp_path / "run")
    trainer.fit()
    assert trainer.global_step == 2
    assert all(torch.isfinite(torch.tensor(v)) for v in _numbers(trainer.history))
    side = built.distiller.trainable()
    extra = {k: p for k, p in side.named_parameters() if not k.startswith("student.")}
    assert extra, f"{method}: no connector, head or projector was built"
    for key, p in extra.items():  # they trained in the last step (the optimizer keeps the grads)
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), key
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in extra.values())
    assert not any(k.startswith(("losses", "projectors")) for k in built.student.state_dict())
    saved = model_tensors(trainer.store.load("last").tensors)  # the checkpoint holds the loss parts
    assert any(k.startswith(("losses.0.", "projectors.0.")) for k in saved)


def _numbers(history) -> list[float]:
    items = history if isinstance(history, list) else [history]
    return [
        v
        for h in items
        for v in (h.values() if isinstance(h, dict) else [])
        if isinstance(v, float)
    ]
