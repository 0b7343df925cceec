"""Terms and taps: a :class:`Term` wires one loss between a student tap and a teacher tap; the
helpers here pick a tap's tensors from a model's outputs and hooks and name the terms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError, did_you_mean
from distill.losses.base import contract_of
from distill.schedules import Schedule
from distill.taps import FeatureTaps
from distill.tasks.base import Batch

TapSpec = str | Sequence[str]


@dataclass
class Term:
    """One loss wired between a student tap and a teacher tap.

    Taps starting with ``@`` name task outputs (``@logits``); others name modules (``layer2``, or
    ``layer2:in`` for the module's input). A list of taps hands the loss a list of tensors (multi-level
    methods). ``projector`` is a module, a registered name (``conv1x1``, ``linear``) built from the shapes
    of an example batch, or ``None``.
    """

    loss: nn.Module
    student: TapSpec = "@logits"
    teacher: TapSpec = "@logits"
    weight: float | Schedule = 1.0
    projector: nn.Module | str | None = None
    name: str | None = None


def _as_list(spec: TapSpec) -> list[str]:
    return [spec] if isinstance(spec, str) else list(spec)


def _module_taps(specs: Sequence[TapSpec]) -> list[str]:
    return [t for s in specs for t in _as_list(s) if not t.startswith("@")]


def _pick(spec: TapSpec, outputs: dict[str, torch.Tensor], taps: FeatureTaps | dict, who: str):
    """Tensors for a tap spec: ``@name`` from the task ``outputs`` (keys without ``@``), else from ``taps``."""

    def one(tap: str) -> torch.Tensor:
        if tap.startswith("@"):
            if tap[1:] not in outputs:
                raise DistillError(
                    f"{who} tap {tap!r} is not an output of this task.{did_you_mean(tap[1:], outputs)} "
                    f"Outputs: {', '.join('@' + k for k in outputs)}"
                )
            return outputs[tap[1:]]
        return taps[tap]

    return one(spec) if isinstance(spec, str) else [one(t) for t in spec]


def _teacher_pick(spec: TapSpec, teacher_outputs: dict[str, torch.Tensor]):
    outputs = {k[1:]: v for k, v in teacher_outputs.items() if k.startswith("@")}
    return _pick(spec, outputs, teacher_outputs, "teacher")


def _term_names(terms: Sequence[Term]) -> list[str]:
    names: list[str] = []
    for term in terms:
        base = term.name or type(term.loss).__name__.removesuffix("Loss").lower() or "term"
        name, i = base, 2
        while name in names or name == "task":
            name, i = f"{base}_{i}", i + 1
        names.append(name)
    return names


def _extras_for(
    loss: nn.Module, batch: Batch, name: str, wanted: Sequence[str] | None = None
) -> dict[str, Any]:
    """What ``loss`` reads from ``batch`` besides the tensors (``wanted``: its ``extra_inputs``,
    when the caller has them)."""
    wanted = contract_of(loss).extra_inputs if wanted is None else wanted
    missing = [k for k in wanted if k not in batch.extras]
    if missing:
        raise DistillError(
            f"term {name!r} needs {missing} from the batch, which carries only {sorted(batch.extras)}; "
            + (
                "ground-truth boxes come with task: detection and a detection dataset"
                if any(k.startswith("box") for k in missing)
                else "use a dataset that provides them (distill's datasets return 'index' and 'label')"
            )
        )
    return {k: batch.extras[k] for k in wanted}
