"""The step's own seeding stays off ``torch.manual_seed``: on a CUDA build of torch with CUDA not started
(CPU training) that call also queues the seeding of every GPU with a formatted stack trace, each call,
which cost more than a small model's whole step. The generators a step draws from get the same seed."""

from __future__ import annotations

import io

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from distill.distiller import Distiller
from distill.tasks import ClassificationTask
from distill.train import TrainConfig, Trainer
from distill.train.step import seed_step_rng, step_seed


def test_seed_step_rng_draws_what_manual_seed_draws_on_the_cpu():
    seed = step_seed(3, 17, 1)
    torch.manual_seed(seed)
    expected = torch.rand(5), torch.randint(0, 1000, (5,))
    torch.manual_seed(0)  # something else in between
    seed_step_rng(seed, torch.device("cpu"))
    got = torch.rand(5), torch.randint(0, 1000, (5,))
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_training_steps_do_not_call_torch_manual_seed(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    data = TensorDataset(x, (x.sum(1) > 0).long())
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    config = TrainConfig(epochs=1, batch_size=8, progress=False, device="cpu")
    trainer = Trainer(
        Distiller(student, ClassificationTask()),
        data,
        None,
        config,
        console=Console(file=io.StringIO()),
    )
    trainer.prepare()
    calls: list[int] = []
    original = torch.manual_seed
    monkeypatch.setattr(torch, "manual_seed", lambda seed: calls.append(seed) or original(seed))
    summary = trainer.fit()
    assert summary["steps"] == 8
    assert len(calls) <= 1  # the run's one seeding at set-up, none per step


def test_total_norm_is_get_total_norm_bit_for_bit_and_keeps_inf_and_nan():
    from distill.train.step import total_norm

    g = torch.Generator().manual_seed(0)
    grads = [
        torch.randn(3, 4, generator=g),
        torch.randn(7, generator=g),
        torch.randn(2, 2, 3, generator=g),
    ]
    assert torch.equal(total_norm(grads), torch.nn.utils.get_total_norm(grads))
    mixed = [grads[0], grads[1].double()]  # two dtypes: torch's own grouping
    assert torch.equal(total_norm(mixed), torch.nn.utils.get_total_norm(mixed))
    assert total_norm([]).item() == 0.0
    for bad in (float("inf"), float("nan")):
        broken = [grads[0], torch.full((2,), bad)]
        assert not torch.isfinite(total_norm(broken))  # the non-finite guard still sees it
