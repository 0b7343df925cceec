"""The trainable side: :class:`StudentSide` runs the student (the module DDP wraps), picks each term's
tensors and adds the weighted parts into one :class:`DistillStep`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from distill.distiller.terms import (
    Term,
    _extras_for,
    _module_taps,
    _pick,
    _teacher_pick,
    _term_names,
)
from distill.losses.base import contract_of
from distill.schedules import Schedule, weight_at
from distill.taps import FeatureTaps
from distill.tasks.base import Batch, Task


@dataclass
class DistillStep:
    """What one forward gives: the total ``loss``, each weighted part (``task``, term names), outputs, and
    what the teacher source changed (:meth:`TeacherSource.batch`)."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    batch: Batch | None = None  # the batch trained on, when the source replaced the given one
    metrics: dict[str, float] = field(default_factory=dict)  # the source's numbers (mode, timings)


class StudentSide(nn.Module):
    """Everything trainable: the student, the projectors and any loss parameters.

    This is the part a data-parallel wrapper (DDP) wraps; the teacher stays outside.
    """

    def __init__(
        self, student: nn.Module, task: Task, terms: list[Term], task_weight: float | Schedule
    ) -> None:
        super().__init__()
        self.student = student
        self.task = task
        self.terms = terms
        self.task_weight = task_weight
        self.losses = nn.ModuleList(t.loss for t in terms)
        self.projectors = nn.ModuleList(
            t.projector if isinstance(t.projector, nn.Module) else nn.Identity() for t in terms
        )
        self.names = _term_names(terms)
        self.student_taps = _module_taps([t.student for t in terms])
        # what each loss reads from the batch besides the two tensors, read once
        self.extra_inputs = [contract_of(t.loss).extra_inputs for t in terms]
        # a task loss weighted 0 is skipped, unless every parameter must take part in every backward
        # (DDP waits for a gradient of each one; set by Distiller.parallelize)
        self.zero_weights_in_graph = False

    def forward(
        self, batch: Batch, teacher_outputs: dict[str, torch.Tensor], epoch: float
    ) -> DistillStep:
        taps: FeatureTaps | dict = {}
        if self.student_taps:
            with FeatureTaps(self.student, self.student_taps) as taps:
                outputs = self.task.forward(self.student, batch.inputs)
        else:
            outputs = self.task.forward(self.student, batch.inputs)
        parts: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None  # float32 at least: the sum of the parts from 0.0
        w_task = weight_at(self.task_weight, epoch)
        if w_task:
            parts["task"] = _weighted(w_task, self.task.loss(outputs, batch))
            total = _add(total, parts["task"])
        elif (
            self.zero_weights_in_graph
        ):  # DDP: the parameters only the task loss reaches get a 0 gradient
            total = _add(total, 0.0 * self.task.loss(outputs, batch))
        for term, name, loss, projector, wanted in zip(
            self.terms, self.names, self.losses, self.projectors, self.extra_inputs, strict=True
        ):
            w = weight_at(term.weight, epoch)
            student = _pick(term.student, outputs, taps, "student")
            teacher = _teacher_pick(term.teacher, teacher_outputs)
            if not isinstance(projector, nn.Identity):  # no projector: the tensors as they are
                student = (
                    projector(student)
                    if not isinstance(student, list)
                    else [projector(s) for s in student]
                )
            extras = _extras_for(loss, batch, name, wanted) if wanted else {}
            parts[name] = _weighted(w, loss(student, teacher, **extras))
            total = _add(total, parts[name])
        if total is None:
            total = outputs[next(iter(outputs))].new_zeros((), dtype=torch.float32)
        return DistillStep(total, parts, outputs)


def _weighted(weight: float, loss: torch.Tensor) -> torch.Tensor:
    """``weight * loss``; a weight of 1 leaves the tensor as it is (the same values, one op fewer)."""
    return loss if weight == 1.0 else weight * loss


def _add(total: torch.Tensor | None, part: torch.Tensor) -> torch.Tensor:
    """``total + part``, where no total yet is a float32 zero: the first part, in float32 when it is
    in a lower precision (``0.0 + part`` gives the same values without the op)."""
    if total is not None:
        return total + part
    return part.float() if part.dtype in (torch.float16, torch.bfloat16) else part
