"""Zheng & Yang, "Knowledge Distillation Based on Transformed Teacher Matching" (weighted TTM, WTTM),
ICLR 2024.

WTTM is TTM (see ``ttm``) with a sample-adaptive weight: each sample's divergence is multiplied by the
power sum of the teacher's distribution,

    U(p_t) = sum_j p_t,j^gamma,   gamma = 1/T,      L = mean_i U(p_t,i) * KL( softmax(z_t,i / T) || softmax(z_s,i) )

``U`` is 1 for a one-hot teacher and grows to ``C^(1-gamma)`` for a uniform one, so samples whose
teacher output is smooth (more "dark knowledge") count more. The weight depends on the teacher only
and carries no gradient. Like TTM the loss is not 0 when student and teacher logits coincide (T != 1).

Defaults: T = 4 (gamma = 0.25). The paper tunes T and the weight beta per pair (appendix A.4; e.g.
T = 5 with weight 4 when WTTM is added to CRD in the authors' README, github.com/zkxufo/TTM). WTTM
replaces the KD term next to cross-entropy with weight 1; taps ``@logits``. The reference code computes
``U`` as ``sum(softmax(z_t) ** gamma)``; here it is the equal ``exp(logsumexp(gamma * log_softmax(z_t)))``,
which does not underflow for very confident teachers.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from distill.losses import LOSSES
from distill.losses.ttm import TTM_ABOUT, TTMLoss, ttm_terms


def wttm_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """Mean over samples of ``U(p_t) * KL(softmax(z_t / T) || softmax(z_s))``."""
    kl, log_power_sum = ttm_terms(student_logits, teacher_logits, temperature)
    return (log_power_sum.exp() * kl).mean()


@LOSSES.register(
    "wttm",
    **TTM_ABOUT,
    weight="tuned per pair (no T^2 factor); e.g. 4 with T=5 next to CRD on CIFAR-100",
)
class WTTMLoss(TTMLoss):
    """Weighted transformed teacher matching on logits ``(B, C)`` (TTM's options and checks)."""

    loss_name: ClassVar[str] = "wttm"

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return wttm_loss(student, teacher, self.temperature)
