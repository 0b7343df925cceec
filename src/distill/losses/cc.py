"""Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019.

Besides matching each sample, the student should reproduce the *correlations between samples*. The
embeddings ``f_i`` of a batch (L2-normalised) give a correlation matrix ``C_ij = k(f_i, f_j)`` with a
Gaussian RBF kernel approximated by its order-P Taylor series:

    k(x, y) = exp(-gamma ||x - y||^2) ~= exp(-2 gamma) * sum_{p=0..P} (2 gamma)^p / p! * (x . y)^p

(exact for unit vectors as P grows), and the loss is the paper's correlation congruence

    L_CC = (1 / n^2) || C_s - C_t ||_F^2

Paper defaults: gamma = 0.4, P = 2 (``kernel="gaussian"``); ``kernel="bilinear"`` is the paper's plain
``C = F F^T`` baseline. As in the CRD repository (RepDistiller) and torchdistill, the student's features
first pass a trainable linear embedding (``embed_dim = 128``, created in ``build()``; ``embed_dim = 0``
uses the features as they are). It trains with the student and is never exported with it.

Where this differs from the public code, deliberately:

* RepDistiller's ``Correlation`` (code the paper's authors e-mailed) computes
  ``mean_i sum_d |e_s - e_t|_i,d * |e_s - e_t|_{i+1},d`` on unnormalised linear embeddings: a product
  of neighbouring samples' errors, not the paper's kernel correlation matrix. We implement the paper.
  Its CIFAR weight (0.02) does not carry over.
* RepDistiller and torchdistill also put a trainable linear embedding on the teacher's side. We use the
  teacher's own features (L2-normalised) instead: a trainable teacher head makes the teacher's
  correlations a moving target, and "both heads map every sample to the same point" would be a
  zero-loss optimum.
* torchdistill takes the unsquared norm ``||C_s - C_t||_F / n^2``; we keep the paper's square.

Practical notes:

* **Taps**: the penultimate embedding, ``pool`` for the zoo's ``cnn`` (RepDistiller: ``feat[-1]``).
  Feature maps are flattened. Widths may differ: only (B, B) matrices are compared.
* **Batch**: relates samples within a batch (repeating the batch leaves the value unchanged).
* **Weight**: the paper does not give one for this exact form; with unit-norm embeddings the loss is
  O(0.01-0.1), and a weight of about 10 puts it on the cross-entropy's scale (the Fashion-MNIST recipe).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distill.losses import LOSSES
from distill.losses._common import positive
from distill.losses.base import DistillLoss

KERNELS = ("gaussian", "bilinear")


def correlation_matrix(
    embeddings: torch.Tensor, kernel: str = "gaussian", gamma: float = 0.4, order: int = 2
) -> torch.Tensor:
    """``(B, D) -> (B, B)`` correlations of L2-normalised embeddings (Taylor-approximated RBF)."""
    f = F.normalize(embeddings.flatten(1), dim=1)
    dots = f @ f.t()
    if kernel == "bilinear":
        return dots
    series = sum((2 * gamma) ** p / math.factorial(p) * dots.pow(p) for p in range(order + 1))
    return math.exp(-2 * gamma) * series


def cc_loss(
    student_embeddings: torch.Tensor,
    teacher_features: torch.Tensor,
    kernel: str = "gaussian",
    gamma: float = 0.4,
    order: int = 2,
) -> torch.Tensor:
    """``||C_s - C_t||_F^2 / B^2``; teacher detached, computed in float32."""
    if student_embeddings.shape[0] != teacher_features.shape[0]:
        raise ValueError(
            f"cc: student {tuple(student_embeddings.shape)} and teacher "
            f"{tuple(teacher_features.shape)} have different batch sizes"
        )
    with torch.autocast(student_embeddings.device.type, enabled=False):
        c_s = correlation_matrix(student_embeddings.float(), kernel, gamma, order)
        c_t = correlation_matrix(teacher_features.detach().float(), kernel, gamma, order)
        return (c_s - c_t).pow(2).sum() / student_embeddings.shape[0] ** 2


@LOSSES.register(
    "cc",
    paper="Peng et al., Correlation Congruence for Knowledge Distillation, ICCV",
    year=2019,
    kind="relation",
    consumes="embeddings (penultimate features), sample-correlation matrices",
    inputs="vectors",
    taps="the penultimate features, e.g. pool for the cnn zoo model",
    weight="about 10 for the paper's kernel form (RepDistiller's 0.02 is for its different formula)",
)
class CCLoss(DistillLoss):
    """Correlation congruence between a student embedding ``(B, D_s)`` and teacher features ``(B, D_t)``."""

    needs_same_shape = False  # only the (B, B) correlation matrices are compared

    def __init__(
        self, gamma: float = 0.4, order: int = 2, kernel: str = "gaussian", embed_dim: int = 128
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"cc: kernel must be one of {KERNELS}, got {kernel!r}")
        positive("cc", "gamma", gamma, "the paper uses 0.4")
        if not isinstance(order, int) or isinstance(order, bool) or order < 1:
            raise ValueError(f"cc: order must be an int >= 1, got {order!r}; the paper uses 2")
        if not isinstance(embed_dim, int) or isinstance(embed_dim, bool) or embed_dim < 0:
            raise ValueError(
                f"cc: embed_dim must be an int >= 0 (0 = no embedding), got {embed_dim!r}"
            )
        self.gamma, self.order, self.kernel, self.embed_dim = float(gamma), order, kernel, embed_dim
        self.embed: nn.Module | None = None if embed_dim else nn.Identity()

    def build(self, student: torch.Tensor, teacher: torch.Tensor, **context: object) -> None:
        """Create the student's linear embedding ``D_s -> embed_dim`` from an example batch."""
        if self.embed_dim:
            self.embed = nn.Linear(student.flatten(1).shape[1], self.embed_dim)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.embed is None:
            raise RuntimeError(
                "cc: the embedding does not exist yet; call build(student, teacher) first "
                "(Distiller.setup does)"
            )
        with torch.autocast(student.device.type, enabled=False):
            embedded = self.embed(student.flatten(1).float())
        return cc_loss(embedded, teacher, self.kernel, self.gamma, self.order)

    def extra_repr(self) -> str:
        return (
            f"kernel={self.kernel!r}, gamma={self.gamma}, order={self.order}, "
            f"embed_dim={self.embed_dim}"
        )
