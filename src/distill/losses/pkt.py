"""Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018.

The student matches the teacher's *probability distribution of neighbours* in feature space. With a
cosine-similarity kernel, shifted to [0, 1], each sample ``i`` gets a conditional distribution over the
batch, ``p_{j|i} = K(i, j) / sum_j K(i, j)`` with ``K(i, j) = (1 + cos(f_i, f_j)) / 2``, and the loss is
the KL divergence of teacher to student distributions:

    L = mean_{i, j} p^t_{j|i} * log( (p^t_{j|i} + eps) / (p^s_{j|i} + eps) )

This is the authors' code (passalis/probabilistic_kt ``cosine_similarity_loss``, copied by RepDistiller
and mdistiller) including its reduction: a mean over all B^2 entries, so for a fixed per-sample
divergence the value scales like 1/B (the paper writes a sum). eps = 1e-7 as in the code. The kernel
needs no hyper-parameter.

Practical notes:

* **Taps**: the penultimate embedding, ``pool`` for the zoo's ``cnn`` (RepDistiller ``feat[-1]``,
  mdistiller ``pooled_feat``); maps are flattened. Widths may differ: only (B, B) matrices are compared.
* **Weight**: 30000 next to the cross-entropy at batch size 64 (RepDistiller and mdistiller, used
  without the KD term). The value scales like 1/B, so the same weight pulls less at larger batches;
  the Fashion-MNIST recipe (batch 256) uses 3000 (``docs/benchmarks/methods.md``).
"""

from __future__ import annotations

import torch

from distill.losses import LOSSES
from distill.losses.base import DistillLoss


def neighbour_distribution(features: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``(B, D) -> (B, B)``: rows ``p_{j|i}`` from the [0, 1]-shifted cosine-similarity kernel."""
    f = features.flatten(1)
    f = torch.nan_to_num(f / (f.norm(dim=1, keepdim=True) + eps), nan=0.0)
    kernel = (f @ f.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """KL(teacher || student) of neighbour distributions, averaged over B^2 entries; in float32."""
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"pkt: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} have different "
            "batch sizes"
        )
    with torch.autocast(student.device.type, enabled=False):
        p_s = neighbour_distribution(student.float(), eps)
        p_t = neighbour_distribution(teacher.detach().float(), eps)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@LOSSES.register(
    "pkt",
    paper="Passalis & Tefas, Learning Deep Representations with Probabilistic Knowledge Transfer, ECCV",
    year=2018,
    kind="relation",
    consumes="embeddings (penultimate features), cosine-kernel neighbour distributions",
    inputs="vectors",
    identity="zero",
    batch_invariant=False,
    taps="the penultimate features, e.g. pool for the cnn zoo model",
    weight="30000 (RepDistiller/mdistiller at batch 64, without KD); 3000 for the Fashion-MNIST pair",
)
class PKTLoss(DistillLoss):
    """Probabilistic knowledge transfer on embeddings ``(B, D)``; widths may differ."""

    needs_same_shape = False  # only the (B, B) neighbour distributions are compared

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        if not 0 < eps < 1e-2:
            raise ValueError(f"pkt: eps must be in (0, 0.01), got {eps}; the authors use 1e-7")
        self.eps = float(eps)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return pkt_loss(student, teacher, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
