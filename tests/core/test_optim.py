"""Optimizer groups and per-step settings: the Ultralytics-style warm-up (bias lr, momentum, minimum
length) and the per-epoch schedule, against a plain reference of Ultralytics' trainer loop."""

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from distill.train import TrainConfig
from distill.train.optim import apply_step_settings, build_optimizer, lr_at, warmup_steps

ULTRA = dict(
    optimizer="adamw",
    lr=0.002,
    momentum=0.937,
    warmup_epochs=1.0,
    min_warmup_steps=100,
    warmup_bias_lr=0.1,
    warmup_momentum=0.8,
    schedule_unit="epoch",
)


def model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def built():
    m = model()
    m(torch.zeros(1, 3, 5, 5))  # materialise the lazy layer
    return m


def ultralytics_reference(ni: int, nb: int, epochs: int, nw: int, cfg: TrainConfig):
    """Ultralytics' BaseTrainer: LambdaLR stepped per epoch with one_cycle(1, lrf=0, epochs) and the
    warm-up interpolation of each group (bias from warmup_bias_lr, the others from 0) towards it; here
    at ``ni + 1``, distill's convention (the first step already moves)."""
    epoch = ni // nb
    target = cfg.lr * ((1 - math.cos(epoch * math.pi / epochs)) / 2 * (0.0 - 1) + 1)
    if ni >= nw:
        return target, target, cfg.momentum
    x = ni + 1
    return (
        float(np.interp(x, [0, nw], [0.0, target])),
        float(np.interp(x, [0, nw], [cfg.warmup_bias_lr, target])),
        float(np.interp(x, [0, nw], [cfg.warmup_momentum, cfg.momentum])),
    )


def test_warmup_steps_has_a_minimum_and_stays_inside_the_run():
    assert warmup_steps(TrainConfig(**ULTRA), steps_per_epoch=64, total=640) == 100
    assert warmup_steps(TrainConfig(**ULTRA), steps_per_epoch=200, total=2000) == 200
    assert warmup_steps(TrainConfig(**ULTRA), steps_per_epoch=10, total=30) == 30
    assert warmup_steps(TrainConfig(warmup_epochs=0.5), steps_per_epoch=10, total=30) == 5
    assert warmup_steps(TrainConfig(), steps_per_epoch=10, total=30) == 0


def test_groups_and_adamw_beta1():
    m = built()
    with_bias = build_optimizer(m.named_parameters(), TrainConfig(**ULTRA))
    decay, norm, bias = with_bias.param_groups
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert ids(decay) == {id(m[0].weight), id(m[3].weight)} and decay["weight_decay"] > 0
    assert ids(norm) == {id(m[1].weight)} and norm["weight_decay"] == 0
    assert ids(bias) == {id(m[0].bias), id(m[1].bias), id(m[3].bias)} and bias["bias"]
    assert all(g["betas"] == (0.937, 0.999) for g in with_bias.param_groups)
    plain = build_optimizer(m.named_parameters(), TrainConfig(optimizer="adamw"))
    assert len(plain.param_groups) == 2  # the layout older checkpoints saved
    assert ids(plain.param_groups[1]) == {
        id(m[1].weight),
        id(m[0].bias),
        id(m[1].bias),
        id(m[3].bias),
    }
    assert plain.param_groups[0]["betas"] == (0.9, 0.999)  # torch's default, as before


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_step_settings_match_ultralytics_loop(optimizer):
    cfg = TrainConfig(**{**ULTRA, "optimizer": optimizer})
    nb, epochs = 64, 10
    total = nb * epochs
    nw = warmup_steps(cfg, nb, total)
    opt = build_optimizer(built().named_parameters(), cfg)
    seen = []
    for ni in range(total):
        lr = apply_step_settings(opt, ni, total, nw, nb, cfg)
        weights, norm, bias = opt.param_groups
        momentum = weights["betas"][0] if optimizer == "adamw" else weights["momentum"]
        ref_lr, ref_bias, ref_momentum = ultralytics_reference(ni, nb, epochs, nw, cfg)
        assert lr == weights["lr"] == norm["lr"] == pytest.approx(ref_lr, rel=1e-12, abs=1e-15)
        assert bias["lr"] == pytest.approx(ref_bias, rel=1e-12)
        assert momentum == pytest.approx(ref_momentum, rel=1e-12)
        seen.append(lr)
    assert opt.param_groups[2]["lr"] < 0.1 / 10  # the bias rate came down
    after = seen[nw:]
    assert len(set(after[: nb * 2 - nw])) == 1  # constant inside an epoch
    assert all(b <= a for a, b in zip(after, after[1:], strict=False))


def test_step_unit_is_unchanged_by_the_epoch_option():
    """The default per-step cosine keeps its exact values (existing runs and tests rely on them)."""
    cfg = TrainConfig(lr=0.4, warmup_epochs=1.0)
    assert [lr_at(s, 100, 10, cfg, 10) for s in range(100)] == [
        lr_at(s, 100, 10, cfg) for s in range(100)
    ]
    epoch = TrainConfig(lr=0.4, warmup_epochs=1.0, schedule_unit="epoch")
    assert lr_at(0, 100, 10, epoch, 10) == pytest.approx(0.04)  # warm-up rises to epoch 0's value
    assert (
        lr_at(25, 100, 10, epoch, 10)
        == lr_at(29, 100, 10, epoch, 10)
        == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(schedule="onecycle", schedule_unit="epoch"), "use schedule: cosine"),
        (dict(warmup_bias_lr=0.1), "warmup_bias_lr=0.1 shape the warm-up, but warmup_epochs is 0"),
        (
            dict(min_warmup_steps=100, warmup_momentum=0.8),
            "min_warmup_steps=100, warmup_momentum=0.8",
        ),
        (dict(warmup_momentum=0.0), "warmup_momentum=0.0"),
    ],
)
def test_inconsistent_warmup_options_are_refused(options, message):
    with pytest.raises(ValidationError, match=message):
        TrainConfig(**options)
