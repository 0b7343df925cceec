"""Huang et al., "Knowledge Distillation from A Stronger Teacher" (DIST), NeurIPS 2022.

DIST replaces KD's exact match of probabilities by a match of *relations*, measured with the Pearson
correlation ``rho`` (invariant to shifting and scaling the predictions), so a much stronger teacher's
sharper or shifted predictions do not have to be copied exactly. With ``Y = softmax(Z / tau)``, ``(B, C)``:

    inter-class  L_inter = 1 - mean_i rho(Y_s[i, :], Y_t[i, :])     each sample's ranking of the classes
    intra-class  L_intra = 1 - mean_j rho(Y_s[:, j], Y_t[:, j])     each class's scores across the batch
    L = tau^2 * (beta * L_inter + gamma * L_intra)

Paper defaults: beta = gamma = 1, tau = 1 (ImageNet; the authors' classification code
``image_classification_sota/lib/models/losses/dist_kd.py``, including the ``tau^2`` factor and
``eps = 1e-8`` in the correlation's denominator). CIFAR-100 reproductions use tau = 4 (e.g. the
``--dist_tau`` default of the TTM authors' CIFAR code). DIST replaces the KD term next to cross-entropy
(weight 1 on ImageNet; 2 is also common on CIFAR-100).

The intra-class term correlates scores across the batch, so the loss depends on which samples share a
batch (it is unchanged when the batch is repeated). Use batches much larger than one; taps ``@logits``.
``standardize=True`` z-scores the logits before the softmax (logit standardization, Sun et al. CVPR
2024 — an extension: their code applies it to KD, DKD and MLKD, not to DIST).
"""

from __future__ import annotations

import torch

from distill.losses import LOSSES
from distill.losses._common import flat_logits, positive
from distill.losses.base import DistillLoss


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of matching rows of ``a`` and ``b`` ``(N, D)`` -> ``(N,)``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    standardize: bool = False,
) -> torch.Tensor:
    """``tau^2 * (beta * inter + gamma * intra)`` for logits ``(B, C)`` (``(..., C)`` is flattened)."""
    s, t = flat_logits(student_logits, teacher_logits, standardize)
    y_s = (s / temperature).softmax(dim=1)
    y_t = (t / temperature).softmax(dim=1)
    inter = 1 - pearson_rows(y_s, y_t).mean()
    intra = 1 - pearson_rows(y_s.t(), y_t.t()).mean()
    return temperature**2 * (beta * inter + gamma * intra)


@LOSSES.register(
    "dist",
    paper="Huang et al., Knowledge Distillation from A Stronger Teacher",
    year=2022,
    kind="logit",
    consumes="logits (correlations within samples and within classes across the batch)",
    inputs="logits",
    identity="zero",
    taps="@logits",
    weight="1 (ImageNet, tau=1); 1-2 with tau=4 on CIFAR-100",
)
class DISTLoss(DistillLoss):
    """Inter- and intra-class Pearson-correlation relation loss on logits ``(B, C)``."""

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 1.0,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        positive("dist", "temperature", temperature, "the paper uses 1 (ImageNet) or 4")
        if beta < 0 or gamma < 0:
            raise ValueError(
                f"dist: beta and gamma must be >= 0, got beta={beta}, gamma={gamma}; the paper uses 1"
            )
        self.beta, self.gamma = float(beta), float(gamma)
        self.temperature = float(temperature)
        self.standardize = bool(standardize)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return dist_loss(
            student, teacher, self.beta, self.gamma, self.temperature, self.standardize
        )

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, gamma={self.gamma}, temperature={self.temperature}, "
            f"standardize={self.standardize}"
        )
