"""Yim et al., "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer
Learning", CVPR 2017.

The student imitates the teacher's *flow of solution procedure* (FSP): for two feature maps ``F1``
(B, C1, H, W) and ``F2`` (B, C2, H, W) of one network, the FSP matrix is their channel-by-channel
inner product averaged over positions,

    G(F1, F2)_{ij} = mean_{h,w} F1_i(h, w) * F2_j(h, w)            (B, C2, C1)

and the loss is the mean squared difference of student and teacher FSP matrices, summed over pairs:

    L = sum_pairs mean_{b,i,j} ( G_s - G_t )^2

The loss takes a list of maps per side, ``[f_1, ..., f_k]`` (k >= 2), and forms the pairs of consecutive
maps ``(f_1, f_2), (f_2, f_3), ...``, as RepDistiller's ``FSP`` does (which uses the stem and the stage
outputs). For the paper's pairs (first and last layer of each section), use one term per section with
two taps each. When the two maps of a pair differ in size, the larger is average-pooled to the smaller
(RepDistiller). The paper weights all pairs equally and has no other hyper-parameter.

**Channel counts**: FSP matrices are C2 x C1, so the paper (and RepDistiller, which raises) needs student
and teacher maps with equal channel counts. ``connector=True`` lifts this: ``build()`` then creates a
trainable 1x1 conv + BN per student map (to the teacher's channel count), an extension of the paper
that lets a thin student learn from a wide teacher. Without it, differing channels fail in ``build()``.

**Two stages**: the paper (and RepDistiller, 30 of 270 epochs) first trains the student on the FSP
loss alone, then on the task alone. With weight schedules: give the FSP term a weight that falls to 0
(``{schedule: cosine_decay, value: 1, final: 0, epochs: k}``) and the task a weight that rises from 0
(``task_weight: {schedule: linear_warmup, value: 1, warmup_epochs: k}``); the shipped recipe does this.

Practical notes:

* **Taps**: the stage outputs including the first, e.g. ``[features.0, features.1, features.2,
  features.3]`` for the zoo's ``cnn``.
* **Weight**: 1 during the first stage (the loss trains alone); RepDistiller's 50 applies only when
  mixed with a task loss, which it does not do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distill.losses import LOSSES
from distill.losses._common import match_spatial
from distill.losses.base import DistillLoss


def fsp_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``(B, C1, H, W), (B, C2, H', W') -> (B, C2, C1)``, pooling the larger map to the smaller size."""
    first, second = match_spatial(first, second)
    return second.flatten(2) @ first.flatten(2).transpose(1, 2) / first[0, 0].numel()


def _check(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> None:
    if isinstance(student, torch.Tensor) or isinstance(teacher, torch.Tensor):
        raise ValueError(
            "fsp: needs lists of feature maps (two or more taps per side), got a single tensor; "
            "e.g. student: [features.0, features.1]"
        )
    if len(student) != len(teacher) or len(student) < 2:
        raise ValueError(
            f"fsp: got {len(student)} student and {len(teacher)} teacher maps; give the same number "
            "(two or more) on both sides"
        )
    for s, t in zip(student, teacher, strict=True):
        if s.ndim != 4 or t.ndim != 4:
            raise ValueError(
                f"fsp: needs feature maps (B, C, H, W), got student {tuple(s.shape)} and teacher "
                f"{tuple(t.shape)}"
            )


def fsp_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over consecutive pairs of ``mean((G_s - G_t)^2)``; teacher detached, in float32."""
    _check(student, teacher)
    with torch.autocast(student[0].device.type, enabled=False):
        s = [x.float() for x in student]
        t = [x.detach().float() for x in teacher]
        total = s[0].new_zeros(())
        for i in range(len(s) - 1):
            g_s, g_t = fsp_matrix(s[i], s[i + 1]), fsp_matrix(t[i], t[i + 1])
            if g_s.shape != g_t.shape:
                raise ValueError(
                    f"fsp: FSP matrices of pair {i} differ: student {tuple(g_s.shape)}, teacher "
                    f"{tuple(g_t.shape)}; the channel counts must match (or set connector: true)"
                )
            total = total + (g_s - g_t).pow(2).mean()
    return total


def _connector(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))


@LOSSES.register(
    "fsp",
    paper="Yim et al., A Gift from Knowledge Distillation (flow of solution procedure), CVPR",
    year=2017,
    kind="feature",
    consumes="lists of feature maps (two or more stages), FSP matrices of consecutive pairs",
    inputs="maps_list",
    identity="zero",
    taps="stage outputs, e.g. [features.0, features.1, features.2, features.3] for the cnn zoo model",
    weight="1, alone in a first stage (cosine_decay to 0, task weight warming up)",
)
class FSPLoss(DistillLoss):
    """FSP loss on lists of maps ``[(B, C_k, H_k, W_k)]``; channels must match unless ``connector``."""

    def __init__(self, connector: bool = False) -> None:
        super().__init__()
        if not isinstance(connector, bool):
            raise ValueError(f"fsp: connector must be true or false, got {connector!r}")
        self.connector = connector
        self.connectors = nn.ModuleList()

    def build(
        self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], **context: object
    ) -> None:
        """Check the maps of an example batch; with ``connector``, create the 1x1 conv + BN maps."""
        _check(student, teacher)
        s_channels = [x.shape[1] for x in student]
        t_channels = [x.shape[1] for x in teacher]
        if self.connector:
            self.connectors = nn.ModuleList(
                _connector(a, b) for a, b in zip(s_channels, t_channels, strict=True)
            )
        elif s_channels != t_channels:
            raise ValueError(
                f"fsp: student channels {s_channels} differ from teacher channels {t_channels}; FSP "
                "needs equal widths: tap layers of equal width or set connector: true"
            )

    def forward(
        self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        if self.connector:
            if len(self.connectors) != len(student):
                raise RuntimeError(
                    "fsp: connectors are not built for these maps; call build(student, teacher) "
                    "first (Distiller.setup does)"
                )
            with torch.autocast(student[0].device.type, enabled=False):
                student = [c(x.float()) for c, x in zip(self.connectors, student, strict=True)]
        return fsp_loss(student, teacher)

    def extra_repr(self) -> str:
        return f"connector={self.connector}"
