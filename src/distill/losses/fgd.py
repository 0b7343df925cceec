"""Yang et al., "Focal and Global Knowledge Distillation for Detectors", CVPR 2022.

FGD distils a neck feature map (one term per level: ``@p3``, ``@p4``, ``@p5``) with four parts, all
driven by the ground-truth boxes and the *teacher's* attention:

* **focal** feature loss: squared error weighted by the teacher's spatial attention
  ``A^S = H W softmax(mean_c |t| / T)`` and channel attention ``A^C = C softmax(mean_hw |t| / T)``,
  split by the boxes into a foreground part (each box's cells weighted ``1 / its cell count``) and a
  background part (every other cell, ``1 / their count``):
  ``L_fg = (1/B) sum M^fg A^S A^C (t - s)^2`` and ``L_bg`` the same with ``M^bg``;
* **attention** loss: ``L_at = (1/B) (sum |A^C_t - A^C_s| + sum |A^S_t - A^S_s|)``;
* **global** loss: each side goes through its own GcBlock (context pooling + channel transform, the
  last conv zero-initialised), ``L_gl = (1/B) sum (GC_s(s) - GC_t(t))^2``;

``L = alpha L_fg + beta L_bg + gamma L_at + lambda L_gl``. This matches the authors' code (yzd-v/FGD,
``mmdet/distillation/losses/fgd.py``, ``FeatureLoss``), including the masks' rounding (``floor`` of the
top-left, ``ceil`` of the bottom-right corner, both ends included) and the GcBlock initialisation.

Defaults are the paper's one-stage setting (the authors' RetinaNet and GFL configs): ``T = 0.5``,
``alpha = 1e-3``, ``beta = 5e-4``, ``gamma = 5e-4``, ``lambda = 5e-6``; the weights live inside, so the
term weight is 1. Other settings of the authors: YOLOX-L -> YOLOX-M (the closest to YOLO) ``alpha =
2e-3``, ``beta = 1e-3``, ``gamma = 1e-3``, ``lambda = 1e-5``; anchor-free FCOS ``T = 0.8``, ``alpha =
1.6e-3``, ``beta = 8e-4``, ``gamma = 8e-4``, ``lambda = 8e-6``; two-stage detectors 20x smaller weights.

Practical notes: student and teacher maps must have the same shape: give the term a ``conv1x1``
projector when the neck widths differ (the official code's ``align`` conv). The GcBlocks are built from
the teacher's channels in ``build()`` and train with the student. Needs ``boxes`` and ``box_index`` from
the detection task; a batch without boxes has only background. The global part makes the loss nonzero
for identical inputs once the two GcBlocks have trained apart (it is zero at initialisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses._boxes import check_boxes, fgd_masks
from distill.losses._common import positive
from distill.losses.base import DistillLoss


def attention(features: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial ``(B, H, W)`` and channel ``(B, C)`` attention of maps ``(B, C, H, W)``; each sums to
    ``H W`` and ``C`` respectively."""
    batch, channels, height, width = features.shape
    value = features.abs()
    spatial = F.softmax(value.mean(dim=1).reshape(batch, -1) / temperature, dim=1)
    channel = F.softmax(value.mean(dim=(2, 3)) / temperature, dim=1)
    return (height * width * spatial).view(batch, height, width), channels * channel


def focal_losses(
    student: torch.Tensor,
    teacher: torch.Tensor,
    foreground: torch.Tensor,
    background: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FGD's ``(L_fg, L_bg, L_at)`` for maps ``(B, C, H, W)`` and masks ``(B, H, W)``."""
    spatial_t, channel_t = attention(teacher, temperature)
    spatial_s, channel_s = attention(student, temperature)
    # per-cell error sum_c A^C_c (s - t)^2, then A^S: both attentions from the teacher only
    error = torch.einsum("bc,bchw->bhw", channel_t, (student - teacher).pow(2)) * spatial_t
    batch = student.shape[0]
    fg = (error * foreground).sum() / batch
    bg = (error * background).sum() / batch
    at = ((channel_s - channel_t).abs().sum() + (spatial_s - spatial_t).abs().sum()) / batch
    return fg, bg, at


class GlobalContext(nn.Module):
    """GcBlock: attention-pooled context ``(B, C, 1, 1)`` through a bottleneck, added to every cell."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.context_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, channels // 2, kernel_size=1),
            nn.LayerNorm([channels // 2, 1, 1]),
            nn.ReLU(),
            nn.Conv2d(channels // 2, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.context_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.context_mask.bias)
        nn.init.zeros_(self.transform[-1].weight)  # the block starts as the identity
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        weights = F.softmax(self.context_mask(x).reshape(batch, 1, -1), dim=2)  # (B, 1, HW)
        context = torch.bmm(x.reshape(batch, channels, -1), weights.transpose(1, 2))  # (B, C, 1)
        return x + self.transform(context.view(batch, channels, 1, 1))


@LOSSES.register(
    "fgd",
    paper="Yang et al., Focal and Global Knowledge Distillation for Detectors",
    year=2022,
    kind="feature",
    consumes="neck feature maps + ground-truth boxes (focal, attention and global parts)",
    inputs="maps",
    identity=None,  # the two GcBlocks differ once trained
    taps="one term per neck level (@p3, @p4, @p5), projector conv1x1 when widths differ",
    weight="1 (alpha..lambda inside; YOLOX: alpha=2e-3, beta=1e-3, gamma=1e-3, lambda_=1e-5)",
)
class FGDLoss(DistillLoss):
    """Focal and global distillation on a neck map ``(B, C, H, W)`` of equal student/teacher shape."""

    extra_inputs = ("boxes", "box_index")

    def __init__(
        self,
        temperature: float = 0.5,
        alpha: float = 1e-3,
        beta: float = 5e-4,
        gamma: float = 5e-4,
        lambda_: float = 5e-6,
    ) -> None:
        super().__init__()
        positive("fgd", "temperature", temperature, "the paper uses 0.5")
        for name, value in (
            ("alpha", alpha),
            ("beta", beta),
            ("gamma", gamma),
            ("lambda_", lambda_),
        ):
            if not value >= 0:
                raise ValueError(f"fgd: {name} must be >= 0, got {value}; see the paper's defaults")
        self.temperature = float(temperature)
        self.alpha, self.beta, self.gamma, self.lambda_ = map(float, (alpha, beta, gamma, lambda_))
        self.context_student: GlobalContext | None = None
        self.context_teacher: GlobalContext | None = None

    @staticmethod
    def _check(student: torch.Tensor, teacher: torch.Tensor) -> None:
        if student.ndim != 4 or student.shape != teacher.shape:
            raise DistillError(
                f"fgd: needs neck maps (B, C, H, W) of equal shape, got student {tuple(student.shape)} "
                f"and teacher {tuple(teacher.shape)}; tap the same level on both sides and give the "
                "term a conv1x1 projector when the widths differ"
            )
        if student.shape[1] < 2:
            raise DistillError(f"fgd: needs at least 2 channels, got {tuple(student.shape)}")

    def build(self, student: torch.Tensor, teacher: torch.Tensor, **context: object) -> None:
        """Create the two GcBlocks from the teacher's channel count."""
        self._check(student, teacher)
        self.context_student = GlobalContext(teacher.shape[1])
        self.context_teacher = GlobalContext(teacher.shape[1])

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        boxes: torch.Tensor,
        box_index: torch.Tensor,
    ) -> torch.Tensor:
        if self.context_student is None:
            raise DistillError(
                "fgd: call build(student, teacher) with example maps first (Distiller.setup does)"
            )
        self._check(student, teacher)
        batch, _, height, width = student.shape
        boxes, box_index = check_boxes(
            boxes.to(student.device), box_index.to(student.device), batch, "fgd"
        )
        foreground, background = fgd_masks(boxes, box_index, batch, height, width)
        s, t = student.float(), teacher.detach().float()
        fg, bg, at = focal_losses(s, t, foreground, background, self.temperature)
        gl = (self.context_student(s) - self.context_teacher(t)).pow(2).sum() / batch
        loss = self.alpha * fg + self.beta * bg + self.gamma * at + self.lambda_ * gl
        return loss.float()

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, alpha={self.alpha}, beta={self.beta}, "
            f"gamma={self.gamma}, lambda_={self.lambda_}"
        )
