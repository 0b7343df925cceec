"""Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021.

Each channel of a feature (or logit) map is turned into a distribution over spatial locations with a
softmax at temperature ``tau``, and the student matches the teacher channel by channel:

    L = tau^2 / (B * C) * sum_{b, c} KL( softmax(t_{b,c,:} / tau) || softmax(s_{b,c,:} / tau) )

where ``s_{b,c,:}`` runs over the ``H * W`` locations of channel ``c`` of sample ``b``. The KL is summed
over locations and averaged over samples and channels, as in the official code (TorchDistiller
``SemSeg-distill/utils/criterion.py``, ``CriterionCWD`` with ``norm_type='channel'``,
``divergence='kl'``). Because each channel is normalised on its own, the loss ignores a constant added
to a whole channel and focuses on where each channel is most active.

Paper defaults: ``tau = 4`` and loss weight 3 on the segmentation logit maps (the official
``exp_cwd.sh channel kl 3 4``); mmrazor's port uses ``tau = 1`` with weight 5 on the logits.

Practical notes: taps must be spatial maps ``(B, C, H, W)`` of equal shape; for feature maps of different
widths give the term a ``conv1x1`` projector. On classification networks tap a late feature stage that
still has a few locations (the softmax runs over ``H * W``; a 1x1 map gives zero loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import LOSSES
from distill.losses._common import positive
from distill.losses.base import DistillLoss


def cwd_loss(
    student_maps: torch.Tensor, teacher_maps: torch.Tensor, tau: float = 4.0
) -> torch.Tensor:
    """Channel-wise spatial-softmax KL, times ``tau^2``, per sample and channel; maps ``(B, C, ...)``."""
    if student_maps.shape != teacher_maps.shape:
        raise ValueError(
            f"cwd: student maps {tuple(student_maps.shape)} and teacher maps "
            f"{tuple(teacher_maps.shape)} differ; give the term a projector (e.g. conv1x1)"
        )
    if student_maps.ndim < 3:
        raise ValueError(
            f"cwd: needs spatial maps (B, C, H, W), got shape {tuple(student_maps.shape)}; "
            "tap a feature stage, not pooled vectors or class logits"
        )
    batch, channels = student_maps.shape[:2]
    s = student_maps.float().reshape(batch, channels, -1) / tau
    t = teacher_maps.detach().float().reshape(batch, channels, -1) / tau
    kl = F.kl_div(
        F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="sum", log_target=True
    )
    return kl * tau**2 / (batch * channels)


@LOSSES.register(
    "cwd",
    paper="Shu et al., Channel-wise Knowledge Distillation for Dense Prediction",
    year=2021,
    kind="feature",
    consumes="feature or logit maps (per-channel spatial distributions)",
    inputs="maps",
    identity="zero",
    taps="a late feature stage with a few locations (projector conv1x1 if widths differ), or logit maps",
    weight="3 with tau=4 on segmentation logit maps (paper)",
)
class CWDLoss(DistillLoss):
    """Channel-wise distillation on maps ``(B, C, H, W)`` of equal shape."""

    def __init__(self, tau: float = 4.0) -> None:
        super().__init__()
        self.tau = positive("cwd", "tau", tau, "the paper uses 4 (1 to 4 is typical)")

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return cwd_loss(student, teacher, self.tau)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"
