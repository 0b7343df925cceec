"""Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

Inputs that are similar (dissimilar) for the teacher should be similar (dissimilar) for the student.
For a batch of features flattened to ``Q`` (B, D), the pairwise similarities ``G = Q Q^T`` (B, B) are
row-wise L2-normalised, and the loss is their squared Frobenius distance over ``B^2``:

    L = (1 / B^2) || norm_rows(Q_t Q_t^T) - norm_rows(Q_s Q_s^T) ||_F^2

summed over the levels given. This matches the paper's Eq. 3-4 and RepDistiller's ``Similarity`` (which
the paper's authors verified) and mdistiller's ``sp_loss``. The (B, B) matrices make student and teacher
widths irrelevant: no projector is needed. The paper has no other hyper-parameter.

Practical notes:

* **Taps**: the last convolutional stage before pooling (RepDistiller ``feat[-2]``, mdistiller
  ``feats[-1]``), e.g. ``features.3`` for the zoo's ``cnn``; lists of taps are summed over levels.
* **Batch**: the loss relates samples of one batch, so its value depends on the batch's composition
  and size (for a fixed per-pair discrepancy it scales like 1/B).
* **Weight**: 3000 next to the cross-entropy (the paper's gamma for CIFAR; RepDistiller and mdistiller,
  used without the KD term). On the Fashion-MNIST pair (batch 256, a 6.5k-parameter student) 3000 cost
  12 points and 1000 four; its recipe uses 300.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from distill.losses import LOSSES
from distill.losses.base import DistillLoss

Features = torch.Tensor | Sequence[torch.Tensor]


def _levels(student: Features, teacher: Features) -> list[tuple[torch.Tensor, torch.Tensor]]:
    s = [student] if isinstance(student, torch.Tensor) else list(student)
    t = [teacher] if isinstance(teacher, torch.Tensor) else list(teacher)
    if len(s) != len(t) or not s:
        raise ValueError(
            f"sp: got {len(s)} student and {len(t)} teacher tensors; give one teacher tap per student tap"
        )
    for a, b in zip(s, t, strict=True):
        if a.shape[0] != b.shape[0]:
            raise ValueError(
                f"sp: student {tuple(a.shape)} and teacher {tuple(b.shape)} have different batch sizes"
            )
    return list(zip(s, t, strict=True))


def similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """``(B, ...) -> (B, B)``: Gram matrix of the flattened features with L2-normalised rows."""
    q = features.flatten(1)
    return F.normalize(q @ q.t(), dim=1)


def sp_loss(student: Features, teacher: Features) -> torch.Tensor:
    """Similarity-preserving loss summed over levels; teacher detached, computed in float32."""
    pairs = _levels(student, teacher)
    with torch.autocast(pairs[0][0].device.type, enabled=False):
        total = pairs[0][0].new_zeros((), dtype=torch.float32)
        for s, t in pairs:
            diff = similarity_matrix(t.detach().float()) - similarity_matrix(s.float())
            total = total + diff.pow(2).sum() / s.shape[0] ** 2
    return total


@LOSSES.register(
    "sp",
    paper="Tung & Mori, Similarity-Preserving Knowledge Distillation, ICCV",
    year=2019,
    kind="relation",
    consumes="features (any shape), batch similarity matrices",
    inputs="maps",
    identity="zero",
    batch_invariant=False,
    taps="the last feature stage before pooling, e.g. features.3 for the cnn zoo model",
    weight="3000 (paper / RepDistiller / mdistiller CIFAR-100, used without KD); 300 for the Fashion-MNIST pair",
)
class SPLoss(DistillLoss):
    """Similarity preservation on features ``(B, ...)`` (or lists of them); widths may differ."""

    needs_same_shape = False  # only the (B, B) similarity matrices are compared

    def forward(self, student: Features, teacher: Features) -> torch.Tensor:
        return sp_loss(student, teacher)
