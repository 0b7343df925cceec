"""Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons",
AAAI 2019.

The student learns *where the teacher's neurons switch on*: the activation boundaries. Each student
pre-activation map, through a trainable connector ``r`` (1x1 conv + BN to the teacher's width), should
be above ``+m`` where the teacher's neuron is active and below ``-m`` where it is not, with a squared
hinge (the paper's differentiable "alternative loss"):

    l(s, t) = sum_{b,c,h,w} (s + m)^2 [s > -m][t <= 0] + (s - m)^2 [s <= m][t > 0],   s = r(student)

    L = 3/1000 * sum_levels 2^(level - n + 1) * l(s_level, t_level) / B

with margin m = 1 (paper default). The level weights halve from the deepest map to the shallower ones
and the ``3/1000`` scale come from the authors' CIFAR code (bhheo/AB_distillation), which RepDistiller's
``ABLoss`` copies; both are kept so their weight (1) applies. Connectors follow the authors' code: a
1x1 conv (no bias, He init with fan-out) + BN per level where the channel counts differ, none where they
match; they are created in ``build()``, train with the student and are never exported with it.

**Inputs**: only the *sign* of the teacher's tensor is read, so the teacher may be tapped before or
after its ReLU. The student's tensor must be a pre-activation (before its ReLU; the connector output is
compared with the margin). Note: a module whose output feeds an in-place ReLU (the zoo's ``cnn`` uses
``ReLU(inplace=True)`` after each BN) is overwritten by it, so tap the convolution before the BN, e.g.
``features.1.0``; where the widths differ, the connector's own BN absorbs the skipped affine map.

**Initialisation stage**: in the paper (and RepDistiller, 30 of 270 epochs) this loss alone first
initialises the student, then the student trains on the task (RepDistiller: cross-entropy; the authors'
CIFAR code: KD) without it. With weight schedules: give the AB term a weight that falls to 0
(``{schedule: cosine_decay, value: 1, final: 0, epochs: k}``) and the task a weight that rises from 0
(``task_weight: {schedule: linear_warmup, value: 1, warmup_epochs: k}``); the shipped recipe does this.

Practical notes:

* **Taps**: one pre-activation per stage (RepDistiller: the three residual stages, ``feat[1:-1]`` with
  ``preact=True``), e.g. student ``[features.1.0, features.2.0, features.3.0]`` and teacher
  ``[features.1.2, features.2.2, features.3.2]`` for the zoo's ``cnn``. Student and teacher maps of a
  level must have the same height and width.
* **Weight**: 1 (the loss alone in the initialisation stage).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from distill.losses import LOSSES
from distill.losses._common import Maps, level_pairs, positive
from distill.losses.base import DistillLoss


def alternative_l2(source: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The paper's squared-hinge activation-boundary loss, summed over all elements."""
    teacher_on = target > 0
    push_down = (source + margin).pow(2) * ((source > -margin) & ~teacher_on)
    push_up = (source - margin).pow(2) * ((source <= margin) & teacher_on)
    return (push_down + push_up).sum()


def ab_loss(student: Maps, teacher: Maps, margin: float = 1.0) -> torch.Tensor:
    """Level-weighted activation-boundary loss of (connected) student maps; teacher detached."""
    pairs = level_pairs("ab", student, teacher)
    n = len(pairs)
    with torch.autocast(pairs[0][0].device.type, enabled=False):
        total = pairs[0][0].new_zeros((), dtype=torch.float32)
        for level, (s, t) in enumerate(pairs):
            if s.shape != t.shape:
                raise ValueError(
                    f"ab: level {level}: student {tuple(s.shape)} and teacher {tuple(t.shape)} differ "
                    "after the connector; tap maps of equal height and width"
                )
            level_loss = alternative_l2(s.float(), t.detach().float(), margin) / s.shape[0]
            total = total + 2.0 ** (level - n + 1) * level_loss
    return total * 3 / 1000


def _connector(c_in: int, c_out: int) -> nn.Module:
    conv = nn.Conv2d(c_in, c_out, 1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / c_out))  # the authors' He init (fan-out)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


@LOSSES.register(
    "ab",
    paper="Heo et al., Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden "
    "Neurons, AAAI",
    year=2019,
    kind="feature",
    consumes="student pre-activation maps (through connectors), teacher activation signs",
    inputs="maps",
    taps="pre-ReLU maps per stage, e.g. student [features.1.0, ...], teacher [features.1.2, ...]",
    weight="1, alone in an initialisation stage (cosine_decay to 0, task weight warming up)",
)
class ABLoss(DistillLoss):
    """Activation-boundary transfer on maps ``(B, C, H, W)`` or lists of them (shallow to deep)."""

    needs_same_shape = False  # the connectors map student channels to the teacher's

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = positive("ab", "margin", margin, "the paper uses 1")
        self.connectors: nn.ModuleList | None = None

    def build(self, student: Maps, teacher: Maps, **context: object) -> None:
        """One connector per level from an example batch: 1x1 conv + BN where channels differ."""
        pairs = level_pairs("ab", student, teacher)
        for level, (s, t) in enumerate(pairs):
            if s.shape[2:] != t.shape[2:]:
                raise ValueError(
                    f"ab: level {level}: student map {tuple(s.shape)} and teacher map "
                    f"{tuple(t.shape)} differ in height/width; tap maps of equal spatial size"
                )
        self.connectors = nn.ModuleList(
            _connector(s.shape[1], t.shape[1]) if s.shape[1] != t.shape[1] else nn.Identity()
            for s, t in pairs
        )

    def forward(self, student: Maps, teacher: Maps) -> torch.Tensor:
        students = [student] if isinstance(student, torch.Tensor) else list(student)
        if self.connectors is None or len(self.connectors) != len(students):
            raise RuntimeError(
                "ab: connectors are not built for these maps; call build(student, teacher) first "
                "(Distiller.setup does)"
            )
        with torch.autocast(students[0].device.type, enabled=False):
            connected = [c(s.float()) for c, s in zip(self.connectors, students, strict=True)]
        return ab_loss(connected, teacher, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
