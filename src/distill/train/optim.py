"""The optimizer and its per-step settings: learning rate (warm-up, then the schedule), bias learning rate
and momentum during warm-up. Everything here is a function of the global step, so resume needs no state.

The warm-up options reproduce Ultralytics' trainer when a recipe asks for them: ``warmup_bias_lr: 0.1``,
``warmup_momentum: 0.8`` (its SGD branch), ``schedule_unit: epoch``; YOLOv5 and older Ultralytics releases
also warm up for at least 100 steps (``min_warmup_steps: 100``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from distill.train.config import TrainConfig


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int, total: int) -> int:
    """Warm-up length in steps: ``warmup_epochs`` worth, at least ``min_warmup_steps``, at most the run."""
    if cfg.warmup_epochs <= 0:
        return 0
    return min(max(int(cfg.warmup_epochs * steps_per_epoch), cfg.min_warmup_steps), total)


def _scheduled(progress: float, final: float, cfg: TrainConfig) -> float:
    if cfg.schedule == "constant":
        return cfg.lr
    return final + (cfg.lr - final) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _bounds(cfg: TrainConfig, total: int, warmup: int) -> tuple[int, float, float]:
    """(warm-up steps, rate the warm-up starts from, rate the schedule ends at)."""
    if cfg.schedule == "onecycle":
        return warmup or int(0.3 * total), cfg.lr / 25, cfg.lr / 25 / 1e4
    return warmup, 0.0, 0.0


def target_lr(
    step: int, total: int, warmup: int, cfg: TrainConfig, steps_per_epoch: int | None = None
) -> float:
    """The schedule's rate at ``step``, which a warm-up step rises towards (``lr`` itself, per step)."""
    warmup, _, final = _bounds(cfg, total, warmup)
    if cfg.schedule_unit == "epoch" and steps_per_epoch:
        epoch_start = step // steps_per_epoch * steps_per_epoch
        return _scheduled(epoch_start / max(1, total), final, cfg)
    if step < warmup:
        return cfg.lr
    return _scheduled((step - warmup) / max(1, total - warmup), final, cfg)


def lr_at(
    step: int, total: int, warmup: int, cfg: TrainConfig, steps_per_epoch: int | None = None
) -> float:
    """Learning rate at optimizer step ``step`` (0-based) of ``total``: linear warm-up, then the schedule.

    ``schedule_unit: step`` (default): the warm-up rises to ``lr``, then the schedule runs over the steps
    after it. ``schedule_unit: epoch`` (Ultralytics, torchvision): the schedule's value is set once per
    epoch from the epoch index over the whole run, and the warm-up rises to that value.
    """
    target = target_lr(step, total, warmup, cfg, steps_per_epoch)
    warmup, start, _ = _bounds(cfg, total, warmup)
    if step < warmup:
        return start + (target - start) * (step + 1) / warmup
    return target


def build_optimizer(
    named: Iterable[tuple[str, nn.Parameter]], cfg: TrainConfig
) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters: weight decay on matrices and kernels only.

    Biases and norm scales get no decay. With ``warmup_bias_lr`` the biases get a group of their own
    (tagged ``bias``) so their learning rate can start high and fall during warm-up.
    """
    decay, no_decay, bias = [], [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        if p.ndim > 1:
            decay.append(p)
        elif cfg.warmup_bias_lr is not None and name.rsplit(".", 1)[-1] == "bias":
            bias.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "bias": False},
        {"params": no_decay, "weight_decay": 0.0, "bias": False},
    ]
    if cfg.warmup_bias_lr is not None:  # only then, so older checkpoints keep their group layout
        groups.append({"params": bias, "weight_decay": 0.0, "bias": True})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


def apply_step_settings(
    optimizer: torch.optim.Optimizer,
    step: int,
    total: int,
    warmup: int,
    steps_per_epoch: int,
    cfg: TrainConfig,
) -> float:
    """Set every group's learning rate (and momentum / AdamW beta1 during warm-up) for ``step``.

    Returns the weights' learning rate (what the metrics log). During warm-up the bias group's rate falls
    linearly from ``warmup_bias_lr`` to the scheduled rate (not through 0 as the others) and momentum rises from ``warmup_momentum``.
    """
    lr = lr_at(step, total, warmup, cfg, steps_per_epoch)
    target = target_lr(step, total, warmup, cfg, steps_per_epoch)
    frac = (step + 1) / warmup if step < warmup else 1.0
    momentum = cfg.momentum
    if cfg.warmup_momentum is not None:
        momentum = cfg.warmup_momentum + (cfg.momentum - cfg.warmup_momentum) * frac
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("bias") and cfg.warmup_bias_lr is not None and step < warmup:
            group["lr"] = cfg.warmup_bias_lr + (target - cfg.warmup_bias_lr) * frac
        if cfg.warmup_momentum is not None:
            if "betas" in group:
                group["betas"] = (momentum, group["betas"][1])
            elif "momentum" in group:
                group["momentum"] = momentum
    return lr
