"""Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", arXiv 2017.

Each channel of a feature map is one "neuron"; its spatial activation pattern (flattened to H*W and
L2-normalised) is a sample of the layer's selectivity distribution. The student's distribution of
channel patterns should match the teacher's, measured by the squared maximum mean discrepancy with a
polynomial kernel ``k(x, y) = (x . y + c)^d``:

    L = mean_{i,i'} k(t_i, t_i') + mean_{j,j'} k(s_j, s_j') - 2 mean_{i,j} k(s_j, t_i)

averaged over samples (each sample's channels form its own distribution) and summed over the levels
given. Paper defaults: the polynomial kernel with d = 2, c = 0 (its "NST-poly"). This matches RepDistiller's
``NSTLoss`` and mdistiller's ``nst_loss`` (which use the full MMD, teacher term included, so that the
loss is 0 when the distributions agree).

Practical notes:

* **Taps**: the stage outputs (RepDistiller ``feat[1:-1]``, mdistiller ``feats[1:]``), e.g.
  ``[features.1, features.2, features.3]`` for the zoo's ``cnn``; lists of taps are summed over levels.
  Channel counts may differ: MMD compares distributions, not channels one by one.
* **Spatial sizes**: where a student and a teacher map differ in height or width, the larger one is
  average-pooled to the smaller size, as RepDistiller and mdistiller do.
* **Weight**: 50 next to the cross-entropy (RepDistiller's and mdistiller's CIFAR-100 setting, used
  without the KD term). On the Fashion-MNIST pair 50 and 10 hurt the 6.5k-parameter student in short
  runs; its recipe uses 5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import LOSSES
from distill.losses._common import Maps, level_pairs, match_spatial
from distill.losses.base import DistillLoss


def channel_patterns(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, C, H*W)`` with each channel's spatial pattern L2-normalised."""
    return F.normalize(features.flatten(2), dim=2)


def _kernel_mean(a: torch.Tensor, b: torch.Tensor, degree: int, constant: float) -> torch.Tensor:
    """Mean of ``(a_i . b_j + c)^d`` over samples and channel pairs; ``a`` (B, C_a, N), ``b`` (B, C_b, N)."""
    n, c_a, c_b = a.shape[2], a.shape[1], b.shape[1]
    if degree == 2 and constant == 0 and n * (c_a + c_b) < c_a * c_b:
        # sum_ij (a_i . b_j)^2 = <A^T A, B^T B>_F: (N, N) Gram matrices, cheaper for small, wide maps
        gram_a, gram_b = a.transpose(1, 2) @ a, b.transpose(1, 2) @ b
        return (gram_a * gram_b).sum(dim=(1, 2)).mean() / (c_a * c_b)
    return (a @ b.transpose(1, 2) + constant).pow(degree).mean()


def nst_loss(student: Maps, teacher: Maps, degree: int = 2, constant: float = 0.0) -> torch.Tensor:
    """Squared MMD of channel patterns summed over levels; teacher detached, computed in float32."""
    pairs = level_pairs("nst", student, teacher)
    with torch.autocast(pairs[0][0].device.type, enabled=False):
        total = pairs[0][0].new_zeros((), dtype=torch.float32)
        for s, t in pairs:
            s, t = match_spatial(s.float(), t.detach().float())
            s, t = channel_patterns(s), channel_patterns(t)
            total = total + (
                _kernel_mean(t, t, degree, constant)
                + _kernel_mean(s, s, degree, constant)
                - 2 * _kernel_mean(s, t, degree, constant)
            )
    return total


@LOSSES.register(
    "nst",
    paper="Huang & Wang, Like What You Like: Knowledge Distill via Neuron Selectivity Transfer, arXiv",
    year=2017,
    kind="feature",
    consumes="feature maps (one or several stages), MMD of channel activation patterns",
    inputs="maps",
    identity="zero",
    taps="stage outputs, e.g. [features.1, features.2, features.3] for the cnn zoo model",
    weight="50 on CIFAR (RepDistiller/mdistiller, without KD); 5 for the Fashion-MNIST pair",
)
class NSTLoss(DistillLoss):
    """Neuron selectivity transfer on feature maps ``(B, C, H, W)`` or lists of them."""

    needs_same_shape = False  # channel counts may differ; spatial sizes are pooled to match

    def __init__(self, degree: int = 2, constant: float = 0.0) -> None:
        super().__init__()
        if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
            raise ValueError(f"nst: degree must be an int >= 1, got {degree!r}; the paper uses 2")
        if not constant >= 0:
            raise ValueError(f"nst: constant must be >= 0, got {constant}; the paper uses 0")
        self.degree, self.constant = degree, float(constant)

    def forward(self, student: Maps, teacher: Maps) -> torch.Tensor:
        return nst_loss(student, teacher, self.degree, self.constant)

    def extra_repr(self) -> str:
        return f"degree={self.degree}, constant={self.constant}"
