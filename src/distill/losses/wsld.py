"""Zhou et al., "Rethinking Soft Labels for Knowledge Distillation: A Bias-Variance Tradeoff Perspective",
ICLR 2021 (weighted soft label distillation, WSLD).

Soft labels reduce variance but add bias, and how much differs per sample. WSLD weights each sample's
soft-label loss by how the student is doing on it *relative to the teacher*, measured by the two
cross-entropies to the true label at T = 1 (both detached):

    r_i = CE(z_s,i, y_i) / (CE(z_t,i, y_i) + 1e-7)
    w_i = 1 - exp(-r_i)                      in [0, 1)
    L   = T^2 * mean_i  w_i * CE( softmax(z_t,i / T), softmax(z_s,i / T) )

with ``CE(p, q) = -sum_c p_c log q_c``. A sample the student already fits better than the teacher
(r small) is a "regularization sample" whose soft label mostly adds bias: its weight drops towards 0.
Where the student lags far behind (r large) the weight tends to 1 and the term is KD. Per sample the
gradient is exactly ``w_i`` times KD's (the soft cross-entropy differs from the KL divergence by the
teacher's entropy, a constant), so the loss is not 0 for identical logits: its value includes the
teacher's entropy.

Defaults are the authors' (official code ``knowledge_distiller.py``, reproduced by mmrazor): T = 2,
and the term has weight alpha = 2.5 next to cross-entropy with weight 1 (ImageNet, ResNet-34 ->
ResNet-18). The public code publishes only this ImageNet setting; the shipped Fashion-MNIST recipe
uses it as is.

Needs the labels (``extra_inputs = ("labels",)``), handed over by the distiller; taps ``@logits``. The
weights carry no gradient. Computed in float32 with log-softmax (no ``log(0)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import LOSSES
from distill.losses._common import flat_logits, positive
from distill.losses.base import DistillLoss

EPS = 1e-7  # the authors' guard against a teacher with zero cross-entropy


def wsld_weights(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """``1 - exp(-CE_s / CE_t)`` per sample, ``(N,)``, from detached logits ``(N, C)`` at T = 1."""
    s, t = student_logits.detach().float(), teacher_logits.detach().float()
    ce_s = F.cross_entropy(s, labels, reduction="none")
    ce_t = F.cross_entropy(t, labels, reduction="none")
    ratio = (ce_s / (ce_t + EPS)).clamp(min=0.0)
    return 1.0 - torch.exp(-ratio)


def wsld_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
) -> torch.Tensor:
    """Weighted soft-label cross-entropy, times T^2; logits ``(..., C)``, integer labels ``(...)``."""
    s, t = flat_logits(student_logits, teacher_logits)
    labels = labels.reshape(-1).long()
    soft_ce = -(F.softmax(t / temperature, dim=-1) * F.log_softmax(s / temperature, dim=-1)).sum(-1)
    weights = wsld_weights(s, t, labels)
    return temperature**2 * (weights * soft_ce).mean()


@LOSSES.register(
    "wsld",
    paper="Zhou et al., Rethinking Soft Labels for Knowledge Distillation: A Bias-Variance "
    "Tradeoff Perspective, ICLR",
    year=2021,
    kind="logit",
    consumes="logits + labels",
    inputs="logits",
    taps="@logits",
    weight="2.5 next to cross-entropy 1 (T=2, the authors' ImageNet setting)",
)
class WSLDLoss(DistillLoss):
    """Weighted soft-label distillation on logits ``(B, C)`` with labels ``(B,)``."""

    extra_inputs = ("labels",)

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        self.temperature = positive(
            "wsld", "temperature", temperature, "the authors use 2 (ImageNet)"
        )

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return wsld_loss(student, teacher, labels, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
