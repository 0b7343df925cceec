"""Park et al., "Relational Knowledge Distillation", CVPR 2019.

The student reproduces the *structure* of the teacher's embedding space rather than the embeddings:

* distance-wise: pairwise Euclidean distances, each normalised by the batch's mean non-zero distance,
  ``L_D = mean_{i,j} huber(d_s(i, j) / mu_s - d_t(i, j) / mu_t)``;
* angle-wise: the cosine of the angle at ``j`` formed by every triplet ``(i, j, k)``,
  ``L_A = mean_{i,j,k} huber(<e_ij, e_kj>_s - <e_ij, e_kj>_t)`` with unit vectors ``e_ij``;

    L = w_D * L_D + w_A * L_A

``huber`` is the smooth L1 loss (delta 1). This matches the authors' code (lenscloth/RKD), RepDistiller's
``RKDLoss`` and mdistiller's ``rkd_loss`` exactly, including the ``eps = 1e-12`` clamp of the squared
distances. Defaults w_D = 25, w_A = 50: the authors' setting for classification, used by RepDistiller
and mdistiller on CIFAR-100 (the paper's metric-learning experiments use 1 and 2). Both terms are
invariant to translating, rotating and uniformly scaling either embedding space.

Practical notes:

* **Taps**: the penultimate embedding, ``pool`` for the zoo's ``cnn`` (RepDistiller ``feat[-1]``,
  mdistiller ``pooled_feat``); feature maps are flattened. Widths may differ.
* **Cost**: the angle term compares all B^3 triplets (tensors of B^3 and B^2 D elements): at batch 256
  a step costs many times a plain training step of a small CNN. ``angle_chunk = k`` (not in the
  paper) computes it within consecutive groups of k samples instead (the batch is shuffled, so these
  are random groups), cutting the cost to B k^2: with k = 64 each group sees the triplets of
  RepDistiller's and mdistiller's batch of 64. The distance term always uses the whole batch.
* **Weight**: 1 next to the cross-entropy, the two inner weights doing the scaling (RepDistiller and
  mdistiller, used without the KD term). On the Fashion-MNIST pair 0.2 did better than 1; its recipe
  uses 0.2 with ``angle_chunk = 64``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import LOSSES
from distill.losses._common import positive
from distill.losses.base import DistillLoss


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``(B, D) -> (B, B)`` Euclidean distances (squared ones clamped at ``eps``), zero diagonal."""
    squared = e.pow(2).sum(1)
    d = (squared.unsqueeze(1) + squared.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), dtype=d.dtype, device=d.device))


def _normalised_distances(e: torch.Tensor, eps: float) -> torch.Tensor:
    d = pairwise_distances(e, eps)
    return d / d[d > 0].mean()


def _angles(e: torch.Tensor) -> torch.Tensor:
    """Cosines of the angles of all triplets, flattened: ``(B, D) -> (B^3,)``."""
    unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # (B, B, D)
    return torch.bmm(unit, unit.transpose(1, 2)).flatten()


def _angle_loss(s: torch.Tensor, t: torch.Tensor, chunk: int) -> torch.Tensor:
    """Smooth-L1 mean over triplets, within consecutive chunks of ``chunk`` samples (0: the batch)."""
    if not chunk or chunk >= len(s):
        return F.smooth_l1_loss(_angles(s), _angles(t))
    pairs = zip(s.split(chunk), t.split(chunk), strict=True)
    total = sum(F.smooth_l1_loss(_angles(a), _angles(b), reduction="sum") for a, b in pairs)
    return total / sum(len(a) ** 3 for a in s.split(chunk))


def rkd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    eps: float = 1e-12,
    angle_chunk: int = 0,
) -> torch.Tensor:
    """``w_D * L_D + w_A * L_A`` on flattened embeddings; teacher detached, computed in float32."""
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"rkd: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} have different "
            "batch sizes"
        )
    with torch.autocast(student.device.type, enabled=False):
        s, t = student.flatten(1).float(), teacher.detach().flatten(1).float()
        total = s.new_zeros(())
        if distance_weight:
            loss_d = F.smooth_l1_loss(_normalised_distances(s, eps), _normalised_distances(t, eps))
            total = total + distance_weight * loss_d
        if angle_weight:
            total = total + angle_weight * _angle_loss(s, t, angle_chunk)
    return total


@LOSSES.register(
    "rkd",
    paper="Park et al., Relational Knowledge Distillation, CVPR",
    year=2019,
    kind="relation",
    consumes="embeddings (penultimate features), pairwise distances and triplet angles",
    inputs="vectors",
    identity="zero",
    batch_invariant=False,
    taps="the penultimate features, e.g. pool for the cnn zoo model",
    weight="1 with inner weights 25 and 50 (RepDistiller/mdistiller, without KD); 0.2 for the Fashion-MNIST pair",
)
class RKDLoss(DistillLoss):
    """Distance- and angle-wise relational distillation on embeddings ``(B, D)``; widths may differ."""

    needs_same_shape = False  # only distances and angles within each space are compared

    def __init__(
        self,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        eps: float = 1e-12,
        angle_chunk: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("distance_weight", distance_weight), ("angle_weight", angle_weight)):
            if not value >= 0:
                raise ValueError(f"rkd: {name} must be >= 0, got {value}; the paper uses 25 and 50")
        if distance_weight == 0 and angle_weight == 0:
            raise ValueError(
                "rkd: distance_weight and angle_weight are both 0; set at least one > 0"
            )
        positive("rkd", "eps", eps, "the authors' code uses 1e-12")
        if not isinstance(angle_chunk, int) or isinstance(angle_chunk, bool) or angle_chunk < 0:
            raise ValueError(
                f"rkd: angle_chunk must be an int >= 0 (0 = the whole batch), got {angle_chunk!r}"
            )
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)
        self.eps, self.angle_chunk = float(eps), angle_chunk

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return rkd_loss(
            student, teacher, self.distance_weight, self.angle_weight, self.eps, self.angle_chunk
        )

    def extra_repr(self) -> str:
        return (
            f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}, "
            f"angle_chunk={self.angle_chunk}"
        )
