"""Automatic layer pairing: ``student: auto`` / ``teacher: auto`` in a feature term.

Both models run once on an example batch with a forward hook on every module. A model's **stages** are
found from its structure and that one pass: starting at the model, a container whose children are
several blocks (at least two children with children of their own) producing feature maps of at least two
spatial sizes is opened up, anything else is one unit (a conv-pool block, a residual stage, an
inverted-residual block); of the units with 4-D outputs ``(B, C, H, W)``, in the order they ran, the last
one of each spatial size ``H x W`` (above 1 x 1) is a stage. So the zoo CNN's stages are
``features.0 .. features.3``, torchvision's ResNet's ``relu, layer1 .. layer4`` and MobileNetV3's
``features.N`` blocks where the size changes.

Stages of the two models are paired by spatial size, shallow to deep: a loss on one map pair
(``inputs: maps``, e.g. fitnet, at, sp) gets the deepest pair of equal size; a loss on lists of maps
(``inputs: maps_list``, e.g. reviewkd, vid, fsp) gets every equal-size pair. Without a common size, stages
are paired by relative depth and the example run says whether the loss accepts the shapes. A loss that
needs equal shapes gets a ``conv1x1`` projector when the channel counts differ (unless the term names
one). The result is the term with module names in place of ``auto``, which ``distill config`` prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distill.config.schema import AUTO, DistillSpec, TermSpec
from distill.errors import ConfigError
from distill.losses import LOSSES
from distill.losses.base import contract_of


@dataclass(frozen=True)
class Stage:
    name: str
    shape: tuple[int, ...]  # (B, C, H, W) on the example batch

    @property
    def size(self) -> tuple[int, int]:
        return self.shape[-2], self.shape[-1]

    def __str__(self) -> str:
        return f"{self.name} ({'x'.join(map(str, self.shape[1:]))})"


def feature_stages(model: nn.Module, run: Callable[[nn.Module], Any]) -> list[Stage]:
    """``model``'s stages (see the module docstring), shallow to deep, from one ``run(model)``."""
    fired: dict[str, tuple[int, tuple[int, ...]]] = {}  # name -> (completion order, 4-D shape)

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                fired[name] = (len(fired), tuple(output.shape))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            run(model)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    units = _units(model, "", fired)
    last_of_size: dict[tuple[int, int], Stage] = {}
    for name in units:
        stage = Stage(name, fired[name][1])
        if stage.size != (1, 1):
            last_of_size.pop(stage.size, None)  # re-inserted: dicts keep insertion order
            last_of_size[stage.size] = stage
    return sorted(last_of_size.values(), key=lambda s: fired[s.name][0])


def _units(
    module: nn.Module, prefix: str, fired: dict[str, tuple[int, tuple[int, ...]]]
) -> list[str]:
    kids = [
        (f"{prefix}.{n}" if prefix else n, m)
        for n, m in module.named_children()
        if (f"{prefix}.{n}" if prefix else n) in fired
        or _fires_inside(f"{prefix}.{n}" if prefix else n, fired)
    ]
    kids.sort(key=lambda kid: fired[kid[0]][0] if kid[0] in fired else _first_inside(kid[0], fired))
    sizes = {fired[name][1][-2:] for name, _ in kids if name in fired}
    blocks = sum(1 for _, m in kids if any(True for _ in m.children()))
    if not prefix or (len(sizes) >= 2 and blocks >= 2):
        return [unit for name, m in kids for unit in _units(m, name, fired)]
    return [prefix] if prefix in fired else []


def _fires_inside(name: str, fired: dict[str, Any]) -> bool:
    return any(key.startswith(name + ".") for key in fired)


def _first_inside(name: str, fired: dict[str, tuple[int, tuple[int, ...]]]) -> int:
    return min(order for key, (order, _) in fired.items() if key.startswith(name + "."))


def pair_stages(
    student: list[Stage], teacher: list[Stage], many: bool
) -> list[tuple[Stage, Stage]]:
    """Equal-size pairs shallow to deep (the deepest one unless ``many``); by relative depth without one."""
    by_size = {t.size: t for t in teacher}
    pairs = [(s, by_size[s.size]) for s in student if s.size in by_size]
    if not pairs:
        n = min(len(student), len(teacher))
        pairs = [
            (
                student[round((i + 1) * len(student) / n) - 1],
                teacher[round((i + 1) * len(teacher) / n) - 1],
            )
            for i in range(n)
        ]
    return pairs if many else pairs[-1:]


def is_auto(term: TermSpec) -> bool:
    return term.student == AUTO or term.teacher == AUTO


def pair_auto_terms(
    spec: DistillSpec,
    student: nn.Module,
    teacher: nn.Module | None,
    run: Callable[[nn.Module], Any],
) -> tuple[DistillSpec, list[str]]:
    """``spec`` with every ``auto`` term resolved, and one line per resolved term saying what it chose.
    ``run(model)`` runs a model on the example batch."""
    if teacher is None or not any(is_auto(t) for t in spec.terms):
        return spec, []
    stages = {"student": feature_stages(student, run), "teacher": feature_stages(teacher, run)}
    for role, found in stages.items():
        if not found:
            raise ConfigError(
                f"auto pairing found no feature maps (B, C, H, W) in the {role}; name its taps "
                "(distill list taps MODEL)"
            )
    terms, notes = [], []
    for i, term in enumerate(spec.terms):
        if not is_auto(term):
            terms.append(term)
            continue
        many = LOSSES.meta(term.loss).get("inputs") == "maps_list"
        pairs = pair_stages(stages["student"], stages["teacher"], many)
        s_names, t_names = [s.name for s, _ in pairs], [t.name for _, t in pairs]
        update: dict[str, Any] = {
            "student": s_names if many else s_names[0],
            "teacher": t_names if many else t_names[0],
        }
        s, t = pairs[-1]
        needs_projector = (
            contract_of(LOSSES.get(term.loss)).needs_same_shape and s.shape[1] != t.shape[1]
        )
        if not many and term.projector is None and needs_projector:
            update["projector"] = "conv1x1"
        terms.append(term.model_copy(update=update))
        shown = ", ".join(f"student {a} <-> teacher {b}" for a, b in pairs)
        projector = f", projector {update['projector']}" if "projector" in update else ""
        notes.append(f"distill.terms.{i} ({term.loss}): {shown}{projector}")
    return spec.model_copy(update={"terms": terms}), notes
