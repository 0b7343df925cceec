"""Hinton et al., "Distilling the Knowledge in a Neural Network", NIPS Deep Learning Workshop 2015.

The student matches the teacher's temperature-softened class distribution:

    L = T^2 * KL( softmax(z_t / T) || softmax(z_s / T) )

averaged over samples (``batchmean``). The ``T^2`` factor keeps the gradient magnitude comparable to
the hard-label loss when ``T`` changes (paper, section 2). Paper default: T in [2, 20]; we use T = 4,
the common choice on CIFAR-100 (Tian et al. 2020).

``standardize=True`` adds the logit standardization of Sun et al., "Logit Standardization in Knowledge
Distillation", CVPR 2024: both logit vectors are z-scored (centred, divided by their own standard
deviation) before the softmax, so the student matches the teacher's logit *relations* rather than their
range. ``temperature`` is then the paper's base temperature and the ``T^2`` factor stays, as in the
authors' code; their CIFAR-100 setting is T = 2 with a KD weight of 9 next to a cross-entropy weight of
0.1 (``--logit-stand --base-temp 2 --kd-weight 9``), i.e. about 90 next to a task weight of 1. The
shipped ``fashion_mnist/kd_ls`` recipe is the ``kd`` recipe with standardization on (that CIFAR weighting
cost 3-6 points on the Fashion-MNIST pair).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import LOSSES
from distill.losses._common import flat_logits, positive
from distill.losses.base import DistillLoss


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    standardize: bool = False,
) -> torch.Tensor:
    """KL(teacher || student) of softened distributions, times T^2; logits ``(..., C)``.

    ``standardize`` z-scores each logit vector first (Sun et al. 2024).
    """
    s, t = flat_logits(student_logits, teacher_logits, standardize)
    s, t = s / temperature, t / temperature
    kl = F.kl_div(
        F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True
    )
    return kl * temperature**2


@LOSSES.register(
    "kd",
    paper="Hinton et al., Distilling the Knowledge in a Neural Network",
    year=2015,
    kind="logit",
    consumes="logits",
    inputs="logits",
    identity="zero",
    taps="@logits",
    weight="1 (T=4 on CIFAR; T=2 for the Fashion-MNIST pair)",
)
class KDLoss(DistillLoss):
    """Soft-target distillation on logits ``(B, C)`` (or ``(B, T, C)`` for sequences)."""

    def __init__(self, temperature: float = 4.0, standardize: bool = False) -> None:
        super().__init__()
        self.temperature = positive("kd", "temperature", temperature, "typical values are 1 to 8")
        self.standardize = bool(standardize)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return kd_loss(student, teacher, self.temperature, self.standardize)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, standardize={self.standardize}"
