"""Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the Performance of Convolutional
Neural Networks via Attention Transfer", ICLR 2017.

The student matches the teacher's *spatial attention maps*. A feature map ``f`` of shape (B, C, H, W)
gives the activation-based map ``Q(f) = mean_c |f_c|^p``, flattened to (B, H*W) and L2-normalised per
sample; the loss is the squared difference of the normalised maps, averaged over samples and
positions, summed over the levels given:

    L = sum_levels mean_{b, hw} ( Q_s / ||Q_s||_2 - Q_t / ||Q_t||_2 )^2

This is the authors' code (szagoruyko/attention-transfer ``at_loss``), which RepDistiller and mdistiller
copy; the paper writes the unsquared p-norm of the difference and a weight of beta = 1000 "divided by the
number of elements in the attention map and batch size", which the averaged squared form implements.
Paper default: p = 2. The map uses ``|f|^p`` as the paper does; the code uses ``f^p``, which is the same
for even p or for post-ReLU features.

Practical notes:

* **Taps**: the outputs of the network's stages (RepDistiller and mdistiller use every residual stage,
  skipping the stem): ``[features.1, features.2, features.3]`` for the zoo's ``cnn``. Pass lists of taps
  for several levels; the loss sums over the (student, teacher) pairs. Channel counts may differ (the
  map averages over channels), so no projector is needed.
* **Spatial sizes**: where a student and a teacher map differ in height or width, the larger one is
  average-pooled to the smaller size (``adaptive_avg_pool2d``), as RepDistiller and mdistiller do.
* **Weight**: 1000 next to the cross-entropy (RepDistiller's and mdistiller's CIFAR-100 setting, without
  the KD term, on 32x32 to 8x8 maps). The mean over positions makes the loss larger on small maps:
  on the Fashion-MNIST pair (7x7 and 3x3 maps) 1000 and 100 wrecked training and 20 or 5 still cost
  accuracy; its recipe uses 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import LOSSES
from distill.losses._common import Maps, level_pairs, match_spatial, positive
from distill.losses.base import DistillLoss


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H*W)``: ``mean_c |f|^p``, L2-normalised per sample."""
    return F.normalize(features.abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(student: Maps, teacher: Maps, p: float = 2.0) -> torch.Tensor:
    """Attention transfer summed over levels; teacher maps are detached, computed in float32."""
    pairs = level_pairs("at", student, teacher)
    with torch.autocast(pairs[0][0].device.type, enabled=False):
        total = pairs[0][0].new_zeros((), dtype=torch.float32)
        for s, t in pairs:
            s, t = match_spatial(s.float(), t.detach().float())
            total = total + (attention_map(s, p) - attention_map(t, p)).pow(2).mean()
    return total


@LOSSES.register(
    "at",
    paper="Zagoruyko & Komodakis, Paying More Attention to Attention (attention transfer), ICLR",
    year=2017,
    kind="feature",
    consumes="feature maps (one or several stages), spatial attention",
    inputs="maps",
    identity="zero",
    taps="stage outputs, e.g. [features.1, features.2, features.3] for the cnn zoo model",
    weight="1000 on CIFAR-size maps (RepDistiller/mdistiller, without KD); 1 for the Fashion-MNIST pair",
)
class ATLoss(DistillLoss):
    """Attention transfer on feature maps ``(B, C, H, W)`` or lists of them (one per level)."""

    needs_same_shape = False  # channels are averaged away; spatial sizes are pooled to match

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        self.p = positive("at", "p", p, "the paper uses p = 2")

    def forward(self, student: Maps, teacher: Maps) -> torch.Tensor:
        return at_loss(student, teacher, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
