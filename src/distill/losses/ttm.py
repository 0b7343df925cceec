"""Zheng & Yang, "Knowledge Distillation Based on Transformed Teacher Matching" (TTM), ICLR 2024.

TTM drops the temperature on the student side: the student's plain distribution ``softmax(z_s)`` matches
the teacher's distribution *transformed* by a power ``gamma = 1/T``:

    L = KL( softmax(z_t / T) || softmax(z_s) )      (softmax(z_t / T) = p_t^gamma / sum_j p_t,j^gamma)

averaged over samples, with no ``T^2`` factor. Compared with KD (temperature on both sides), the
objective gains a Rényi-entropy term on the student's output, an extra regularizer the paper credits
for the better generalization. Because the student is compared at temperature 1, the loss is *not*
zero when student and teacher logits coincide (unless T = 1).

Defaults: T = 4 (gamma = 0.25, the KD temperature the paper starts from). The paper tunes T and the
loss weight beta per teacher/student pair (its appendix A.4); without the ``T^2`` factor the weights
are large, e.g. T = 10 (gamma 0.1) with weight 45 next to cross-entropy with weight 1 for VGG13 -> VGG8
in the authors' README (github.com/zkxufo/TTM). TTM replaces the KD term; taps ``@logits``. ``wttm``
adds the paper's sample-adaptive weight.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from distill.losses import LOSSES
from distill.losses._common import check_temperature, flat_logits
from distill.losses.base import DistillLoss


def ttm_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``KL(softmax(z_t/T) || softmax(z_s))`` and log of the power sum ``sum_j p_t,j^(1/T)``.

    Logits ``(..., C)`` are flattened to ``(N, C)``; both results are ``(N,)``, float32.
    """
    s, t = flat_logits(student_logits, teacher_logits)
    log_p_s = F.log_softmax(s, dim=-1)
    log_q_t = F.log_softmax(t / temperature, dim=-1)  # the power-transformed teacher
    kl = F.kl_div(log_p_s, log_q_t, reduction="none", log_target=True).sum(dim=-1)
    log_power_sum = torch.logsumexp(F.log_softmax(t, dim=-1) / temperature, dim=-1)
    return kl, log_power_sum


def ttm_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """Mean over samples of ``KL(softmax(z_t / T) || softmax(z_s))``."""
    kl, _ = ttm_terms(student_logits, teacher_logits, temperature)
    return kl.mean()


# the catalogue entries TTM and WTTM (wttm.py) share: one paper, the same inputs and taps
TTM_ABOUT: dict[str, Any] = {
    "paper": "Zheng & Yang, Knowledge Distillation Based on Transformed Teacher Matching",
    "year": 2024,
    "kind": "logit",
    "consumes": "logits",
    "inputs": "logits",
    "identity": None,
    "taps": "@logits",
}


@LOSSES.register(
    "ttm",
    **TTM_ABOUT,
    weight="tuned per pair, often 10-50 (no T^2 factor); e.g. 45 with T=10 on CIFAR-100",
)
class TTMLoss(DistillLoss):
    """Transformed teacher matching on logits ``(B, C)``: teacher at temperature T, student at 1."""

    loss_name: ClassVar[str] = "ttm"  # in option errors

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = check_temperature(self.loss_name, temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return ttm_loss(student, teacher, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
