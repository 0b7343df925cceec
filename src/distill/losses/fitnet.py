"""Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.

A student layer (the "guided" layer), mapped by a learned regressor, imitates a teacher layer
(the "hint"): ``L = mean((r(u_s) - u_t)^2)``. The regressor is the term's projector (``conv1x1`` for
feature maps, ``linear`` for vectors); it trains with the student and is never exported with it.
The paper trains the hint stage first; the common single-stage variant (Tian et al. 2020) adds the
hint loss with weight 100 to the task loss, which is what the shipped recipes do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import LOSSES
from distill.losses.base import DistillLoss


def fitnet_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Mean squared error between (projected) student and teacher features of equal shape."""
    if student_features.shape != teacher_features.shape:
        raise ValueError(
            f"fitnet: student features {tuple(student_features.shape)} and teacher features "
            f"{tuple(teacher_features.shape)} differ; give the term a projector (e.g. conv1x1)"
        )
    return F.mse_loss(student_features.float(), teacher_features.detach().float())


@LOSSES.register(
    "fitnet",
    paper="Romero et al., FitNets: Hints for Thin Deep Nets",
    year=2015,
    kind="feature",
    consumes="features (through a projector)",
    inputs="maps",
    identity="zero",
    taps="a middle or last feature stage, with projector conv1x1 (linear for vectors)",
    weight="100 for mean-squared hints on CIFAR (Tian et al. 2020); 1 for the Fashion-MNIST pair",
)
class FitNetLoss(DistillLoss):
    """Hint loss on features of any shape ``(B, ...)``; shapes must match after the projector."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return fitnet_loss(student, teacher)
