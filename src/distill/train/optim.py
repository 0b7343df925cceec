"""The optimizer and its per-step settings: learning rate (warm-up, then the schedule), bias learning rate
and momentum during warm-up. Everything here is a function of the global step, so resume needs no state.

Each parameter group's rate follows the schedule scaled by its own base rate (``initial_lr``, set when
the optimizer is built: a pretrained backbone at a tenth of the head's rate keeps that ratio throughout).

The warm-up options reproduce Ultralytics' trainer when a recipe asks for them: ``warmup_bias_lr: 0.1``,
``warmup_momentum: 0.8`` (its SGD branch), ``schedule_unit: epoch``; YOLOv5 and older Ultralytics releases
also warm up for at least 100 steps (``min_warmup_steps: 100``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError, did_you_mean
from distill.train.config import ADAM_FAMILY, TrainConfig

Named = list[tuple[str, nn.Parameter]]
OptimizerFactory = Callable[[Named], torch.optim.Optimizer]
"""Builds the optimizer from the trainable ``(name, parameter)`` pairs (each with ``requires_grad``)."""
ParamGroups = Sequence[Mapping[str, Any]]
"""``[{"params": "student.backbone", "lr": 1e-4}, ...]``: ``params`` is a module-name prefix (or a list
of them) or a list of parameters; the other keys (``lr``, ``weight_decay``, ...) override the recipe's for
those parameters. Parameters in no group keep the recipe's settings."""
OptimizerSpec = OptimizerFactory | ParamGroups | None
# a group's own peak rate, which the schedule scales (the key torch's LRScheduler uses for it)
BASE_LR = "initial_lr"


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
    named: Iterable[tuple[str, nn.Parameter]], cfg: TrainConfig, spec: OptimizerSpec = None
) -> torch.optim.Optimizer:
    """The optimizer over the trainable parameters, each group tagged with its base rate.

    ``spec`` is a factory (called with the ``(name, parameter)`` pairs that require gradients; any
    ``torch.optim`` optimizer), parameter groups (see :data:`ParamGroups`; default: ``cfg.param_groups``)
    or None. Without a factory, ``cfg.optimizer`` is built with weight decay on matrices and kernels
    only: biases and norm scales get none, and with ``warmup_bias_lr`` the biases get a group of their
    own (tagged ``bias``) so their learning rate can start high and fall during warm-up.
    """
    params = [(name, p) for name, p in named if p.requires_grad]
    if isinstance(spec, torch.optim.Optimizer):
        raise DistillError(
            f"optimizer= got a built {type(spec).__name__}; pass a function that builds it from the "
            f"trainable parameters, e.g. optimizer=lambda named: torch.optim.{type(spec).__name__}"
            "([p for _, p in named], lr=...)"
        )
    if callable(spec):
        optimizer = spec(params)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise DistillError(
                f"the optimizer factory returned {type(optimizer).__name__}, not a torch.optim.Optimizer; "
                "return one built over the (name, parameter) pairs it is given"
            )
    else:
        if spec is None:
            spec = [
                {"params": g.prefix, "lr": cfg.lr * g.lr_scale}
                | ({"weight_decay": g.weight_decay} if g.weight_decay is not None else {})
                for g in cfg.param_groups
            ]
        optimizer = _named_optimizer(cfg, _split_groups(params, cfg, _assign(params, spec)))
    for group in optimizer.param_groups:
        group.setdefault(BASE_LR, group["lr"])
    return optimizer


def _assign(params: Named, spec: ParamGroups) -> list[tuple[dict[str, Any], Named]]:
    """Each parameter's group: the one listing it, else the longest matching prefix, else the default
    (first, with no overrides)."""
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
        raise DistillError(
            f"optimizer= must be a function or a list of parameter groups, got {type(spec).__name__}; "
            'e.g. optimizer=[{"params": "student.backbone", "lr": 1e-4}]'
        )
    groups: list[tuple[dict[str, Any], Named]] = [({}, [])]
    owner: dict[int, int] = {}  # parameter id -> index in groups (an explicit list)
    prefixes: list[tuple[str, int]] = []
    names = [name for name, _ in params]
    for i, group in enumerate(spec, start=1):
        if not isinstance(group, Mapping) or "params" not in group:
            raise DistillError(
                f"parameter group {i} must be a dict with a 'params' key, got {group!r}; "
                'e.g. {"params": "student.backbone", "lr": 1e-4}'
            )
        overrides = {k: v for k, v in group.items() if k != "params"}
        groups.append((overrides, []))
        given = group["params"]
        for item in [given] if isinstance(given, (str, torch.Tensor)) else list(given):
            if isinstance(item, str):
                if not any(n == item or n.startswith(item + ".") for n in names):
                    modules = _modules(names)
                    raise DistillError(
                        f"parameter group {i}: no trainable parameter is under {item!r}."
                        f"{did_you_mean(item, modules)} Use a module name such as "
                        f"{', '.join(repr(m) for m in modules[:3])}"
                    )
                prefixes.append((item, len(groups) - 1))
            elif isinstance(item, torch.Tensor):
                if id(item) in owner:
                    raise DistillError(
                        f"a parameter is listed in parameter groups {owner[id(item)]} and {i}; "
                        "list each parameter once"
                    )
                owner[id(item)] = len(groups) - 1
            else:
                raise DistillError(
                    f"parameter group {i}: params must be module-name prefixes or parameters, got "
                    f"{type(item).__name__}"
                )
    known = {id(p) for _, p in params}
    if any(key not in known for key in owner):
        raise DistillError(
            "a parameter group lists a parameter that is not trainable in this distiller (frozen, or "
            "of another model); list the distiller's own parameters or use module-name prefixes"
        )
    for name, p in params:
        index = owner.get(id(p))
        if index is None:
            matches = [
                (len(pre), j) for pre, j in prefixes if name == pre or name.startswith(pre + ".")
            ]
            index = max(matches)[1] if matches else 0
        groups[index][1].append((name, p))
    return groups


def _modules(names: list[str]) -> list[str]:
    """Every module path that holds a parameter (``student.0`` for ``student.0.weight``)."""
    found: dict[str, None] = {}
    for name in names:
        parts = name.split(".")[:-1]
        for k in range(1, len(parts) + 1):
            found[".".join(parts[:k])] = None
    return list(found)


def _split_groups(
    params: Named, cfg: TrainConfig, assigned: list[tuple[dict[str, Any], Named]]
) -> list[dict[str, Any]]:
    """Each group split into decay (matrices, kernels), no-decay and (``warmup_bias_lr``) bias parts.

    Without user groups the three parts are kept even when empty, so older checkpoints keep their
    layout; a user group's empty parts are left out."""
    out: list[dict[str, Any]] = []
    for overrides, members in assigned:
        decay, no_decay, bias = [], [], []
        for name, p in members:
            if p.ndim > 1:
                decay.append(p)
            elif cfg.warmup_bias_lr is not None and name.rsplit(".", 1)[-1] == "bias":
                bias.append(p)
            else:
                no_decay.append(p)
        parts = [
            {"params": decay, "weight_decay": cfg.weight_decay, "bias": False},
            {"params": no_decay, "weight_decay": 0.0, "bias": False},
        ]
        if (
            cfg.warmup_bias_lr is not None
        ):  # only then, so older checkpoints keep their group layout
            parts.append({"params": bias, "weight_decay": 0.0, "bias": True})
        for part in parts:
            part.update({k: v for k, v in overrides.items() if k != "weight_decay"})
            if part is parts[0] and "weight_decay" in overrides:
                part["weight_decay"] = overrides["weight_decay"]
        out += parts if len(assigned) == 1 else [p for p in parts if p["params"]]
    return out


def _named_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``groups``: momentum is SGD's and RMSprop's momentum and the Adam
    family's beta1; Adam, NAdam, RAdam and Adamax add weight decay to the gradient (L2), AdamW
    decouples it."""
    eps = {"eps": cfg.eps} if cfg.eps is not None else {}
    name = cfg.optimizer
    # torch picks the multi-tensor (foreach) update on CUDA only; on the CPU it is the same numbers
    # (to the bit for these optimizers; not NAdam's or RAdam's) with one call per step instead of a
    # Python loop over the parameters
    fast = {"foreach": True} if name not in ("nadam", "radam") and _plain_cpu(groups) else {}
    if name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            **fast,
        )
    if name in ADAM_FAMILY:
        cls = {
            "adamw": torch.optim.AdamW,
            "adam": torch.optim.Adam,
            "nadam": torch.optim.NAdam,
            "radam": torch.optim.RAdam,
            "adamax": torch.optim.Adamax,
        }[name]
        return cls(groups, lr=cfg.lr, betas=(cfg.momentum, cfg.beta2), **eps, **fast)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, **eps, **fast)
    return torch.optim.Adagrad(groups, lr=cfg.lr, **eps, **fast)


def _plain_cpu(groups: list[dict[str, Any]]) -> bool:
    """Whether every parameter is a plain tensor on the CPU (not a DTensor or another subclass)."""
    params = [p for group in groups for p in group["params"]]
    return bool(params) and all(
        p.device.type == "cpu" and type(p.data) is torch.Tensor for p in params
    )


def apply_step_settings(
    optimizer: torch.optim.Optimizer,
    step: int,
    total: int,
    warmup: int,
    steps_per_epoch: int,
    cfg: TrainConfig,
) -> float:
    """Set every group's learning rate (and momentum / Adam beta1 during warm-up) for ``step``.

    Each group's rate is the schedule's times its base rate over ``cfg.lr`` (1 for a group built at
    ``cfg.lr``, and for groups from checkpoints older than the base rate). Returns the first group's
    rate (what the metrics log). During warm-up the bias group's rate falls linearly from
    ``warmup_bias_lr`` to the scheduled rate (not through 0 as the others) and momentum rises from
    ``warmup_momentum``.
    """
    lr = lr_at(step, total, warmup, cfg, steps_per_epoch)
    target = target_lr(step, total, warmup, cfg, steps_per_epoch)
    frac = (step + 1) / warmup if step < warmup else 1.0
    momentum = cfg.momentum
    if cfg.warmup_momentum is not None:
        momentum = cfg.warmup_momentum + (cfg.momentum - cfg.warmup_momentum) * frac
    for group in optimizer.param_groups:
        scale = group.get(BASE_LR, cfg.lr) / cfg.lr  # exactly 1.0 for a group at cfg.lr
        group["lr"] = lr * scale
        if group.get("bias") and cfg.warmup_bias_lr is not None and step < warmup:
            group["lr"] = cfg.warmup_bias_lr + (target * scale - cfg.warmup_bias_lr) * frac
        if cfg.warmup_momentum is not None:
            if "betas" in group:
                group["betas"] = (momentum, group["betas"][1])
            elif "momentum" in group:
                group["momentum"] = momentum
    return optimizer.param_groups[0]["lr"] if optimizer.param_groups else lr
