"""Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021 (ReviewKD).

Each level of the student is taught by the teacher's feature at the same level *and* reviewed by the
deeper levels: the student's features (a list of taps, shallow to deep) are fused deep-to-shallow, and
the fused feature of each level is matched to the teacher's feature of that level.

Fusion ("attention based fusion", ABF): level ``i``'s student feature goes through a 1x1 conv + BN to
``mid_channels``; unless it is the deepest level, it is blended with the fused feature of level ``i+1``
(nearest-upsampled to its size) by two spatial attention maps, ``x * a_0 + y * a_1`` with
``[a_0, a_1] = sigmoid(conv1x1([x, y]))``. The blend is resized to the teacher's size at that level
(nearest), passed on to level ``i-1``, and mapped by a 3x3 conv + BN to the teacher's channels: ``F_i``.

Hierarchical context loss (HCL) between ``F_i`` and the teacher feature ``T_i`` (``H x W``):

    HCL = [ MSE(F, T) + sum_k 2^-k MSE(pool_{l_k}(F), pool_{l_k}(T)) ] / (1 + sum_k 2^-k)

over the pyramid levels ``l`` in ``levels`` = (4, 2, 1) smaller than ``H`` (adaptive average pooling to
``l x l``; ``k`` counts the levels used), and ``L = sum_i HCL(F_i, T_i)``.

Defaults follow the authors' code (github.com/dvlab-research/ReviewKD, ``CIFAR-100/model/reviewkd.py``)
and mdistiller: pyramid levels 4, 2, 1; ``mid_channels = min(512, channels of the deepest student
level)``; a loss weight of 1 (mdistiller's default) ramped up linearly over the first 20 of 240 epochs
(``weight: {schedule: linear_warmup, value: 1.0, warmup_epochs: 20}``). Tuned weights differ per pair:
the authors' scripts use 5 for ResNet32x4 -> ResNet8x4 and 0.6 for ResNet56 -> ResNet20. ReviewKD is used
with the cross-entropy and without the ``kd`` term.

Practical notes:

* taps: the same number of levels on both sides, shallow to deep; the official setting is every stage
  output plus the pooled features (e.g. ``[features.0, features.1, features.2, features.3, pool]`` for
  the zoo CNN). A ``(B, C)`` vector in the list is treated as a ``(B, C, 1, 1)`` map, as the official
  code does with the pooled feature. Channels and sizes may differ from the teacher's at every level.
* the fusion modules are built from the example shapes by :meth:`build`; they train with the student
  and are never exported with it. Their BatchNorm uses batch statistics while training.
* the official code taps the teacher's pre-activation features; a tap on a BatchNorm whose output an
  in-place ReLU overwrites captures post-activation values, so post-activation stage outputs (the
  mdistiller student's choice) are the safe default.

Differences from the official code: sizes come from the example tensors (any ``H x W``, not square only)
instead of per-architecture tables, and everything is computed in float32 (autocast off inside).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses.base import DistillLoss


def hcl_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    levels: Sequence[int] = (4, 2, 1),
) -> torch.Tensor:
    """Hierarchical context loss summed over feature pairs of equal shape ``(B, C, H, W)``."""
    total = student[0].new_zeros((), dtype=torch.float32)
    for fs, ft in zip(student, teacher, strict=True):
        fs, ft = fs.float(), ft.detach().float()
        loss, weight, norm = F.mse_loss(fs, ft), 1.0, 1.0
        for size in levels:
            if size >= fs.shape[-2]:
                continue
            weight /= 2.0
            pooled = F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
            loss = loss + weight * pooled
            norm += weight
        total = total + loss / norm
    return total


class AttentionFusion(nn.Module):
    """ABF: 1x1 conv + BN to ``mid`` channels, attention blend with the deeper level's fused feature
    (when ``fuse``), resize to the teacher's size, 3x3 conv + BN to ``out`` channels."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid_channels),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.att_conv = (
            nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid())
            if fuse
            else None
        )
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: torch.Tensor, deeper: torch.Tensor | None, out_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output (B, out, *out_size), fused (B, mid, *out_size))`` for student feature ``x``."""
        x = self.conv1(x)
        if self.att_conv is not None:
            assert deeper is not None, "a fusing level needs the deeper level's fused feature"
            y = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            attention = self.att_conv(torch.cat([x, y], dim=1))
            x = x * attention[:, 0:1] + y * attention[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


def _as_maps(features: torch.Tensor | Sequence[torch.Tensor], who: str) -> list[torch.Tensor]:
    tensors = [features] if isinstance(features, torch.Tensor) else list(features)
    maps = []
    for i, x in enumerate(tensors):
        if x.ndim == 2:
            x = x[:, :, None, None]  # pooled features: a 1x1 map
        if x.ndim != 4:
            raise DistillError(
                f"reviewkd: {who} level {i} has shape {tuple(x.shape)}; each tap must give (B, C, H, W) "
                "maps or (B, C) pooled features"
            )
        maps.append(x)
    return maps


@LOSSES.register(
    "reviewkd",
    paper="Chen et al., Distilling Knowledge via Knowledge Review",
    year=2021,
    kind="feature",
    consumes="multi-level features (fused deep-to-shallow by trainable ABF modules)",
    inputs="maps_list",
    identity=None,
    taps="every stage output plus the pooled features, shallow to deep, the same count on both sides",
    weight="1 with a linear warm-up over the first 1/12 of training (mdistiller: 20 of 240 epochs)",
)
class ReviewKDLoss(DistillLoss):
    """Knowledge review on lists of student/teacher features (shallow to deep). Call :meth:`build` (the
    distiller does) before the first forward."""

    needs_same_shape = False

    def __init__(self, mid_channels: int | None = None, levels: Sequence[int] = (4, 2, 1)) -> None:
        super().__init__()
        if mid_channels is not None and not (isinstance(mid_channels, int) and mid_channels >= 1):
            raise ValueError(
                f"reviewkd: mid_channels must be an int >= 1 or None (min(512, deepest student "
                f"channels), the official choice), got {mid_channels!r}"
            )
        levels = tuple(levels)
        if not all(isinstance(n, int) and n >= 1 for n in levels):
            raise ValueError(
                f"reviewkd: levels must be pooled sizes >= 1, got {list(levels)}; the paper uses [4, 2, 1]"
            )
        self.mid_channels = mid_channels
        self.levels = levels
        self.fusions: nn.ModuleList | None = None  # one ABF per level, shallow to deep

    def build(
        self,
        student: torch.Tensor | Sequence[torch.Tensor],
        teacher: torch.Tensor | Sequence[torch.Tensor],
        **_: object,
    ) -> None:
        """Create one fusion module per level from the example features' channels."""
        s, t = _as_maps(student, "student"), _as_maps(teacher, "teacher")
        if len(s) != len(t):
            raise DistillError(
                f"reviewkd: the student gives {len(s)} levels but the teacher {len(t)}; tap the same "
                "number of levels on both sides, shallow to deep"
            )
        mid = self.mid_channels or min(512, s[-1].shape[1])
        self.fusions = nn.ModuleList(
            AttentionFusion(x.shape[1], mid, y.shape[1], fuse=i < len(s) - 1)
            for i, (x, y) in enumerate(zip(s, t, strict=True))
        )

    def review(
        self, student: Sequence[torch.Tensor], teacher_sizes: Sequence[tuple[int, int]]
    ) -> list[torch.Tensor]:
        """Fused student features, shallow to deep, each with the teacher's channels and size."""
        if self.fusions is None:
            raise DistillError(
                "reviewkd has no fusion modules yet; call build() first (distiller.setup)"
            )
        if len(student) != len(self.fusions):
            raise DistillError(
                f"reviewkd was built for {len(self.fusions)} levels but got {len(student)} student features"
            )
        outputs: list[torch.Tensor] = []
        fused = None
        for x, fusion, size in zip(
            reversed(student), reversed(self.fusions), reversed(teacher_sizes), strict=True
        ):
            out, fused = fusion(x, fused, size)
            outputs.insert(0, out)
        return outputs

    def forward(
        self,
        student: torch.Tensor | Sequence[torch.Tensor],
        teacher: torch.Tensor | Sequence[torch.Tensor],
    ) -> torch.Tensor:
        s, t = _as_maps(student, "student"), _as_maps(teacher, "teacher")
        if len(s) != len(t):
            raise DistillError(
                f"reviewkd: the student gives {len(s)} levels but the teacher {len(t)}; tap the same "
                "number of levels on both sides"
            )
        with torch.autocast(s[0].device.type, enabled=False):
            outputs = self.review([x.float() for x in s], [tuple(y.shape[-2:]) for y in t])
            return hcl_loss(outputs, [y.detach().float() for y in t], self.levels)

    def extra_repr(self) -> str:
        return f"mid_channels={self.mid_channels}, levels={list(self.levels)}"
