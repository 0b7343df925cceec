"""Zheng et al., "Localization Distillation for Dense Object Detection", CVPR 2022 (LD).

Heads with Distribution Focal Loss (GFL, YOLOv8, YOLO11) predict each box side as a distribution over
``reg_max`` bins. LD distils those distributions like KD distils classes: per anchor point ``a`` and
side ``k`` (left, top, right, bottom),

    l_{a,k} = T^2 / reg_max * KL( softmax(t_{a,k} / T) || softmax(s_{a,k} / T) )
    L = sum_a w_a (1/4) sum_k l_{a,k} / sum_a w_a

The per-side term is the authors' ``knowledge_distillation_kl_div_loss`` (HikariTJU/LD,
``mmdet/models/losses/kd_loss.py``: the KL's elements are *averaged* over the bins, times ``T^2``); the
four sides are averaged as ``LDHead.loss_single`` does (weights repeated per side, ``avg_factor=4``).

Where to distil: the paper distils on the main distillation region (the positive locations of the
label assigner, weighted by the classification score) and a "valuable localization region". A
tensor-in loss sees no assigner output, so the anchor weights ``w_a`` come from the teacher:

* taps ``["@boxes", "@scores"]`` on both sides: ``w_a = max_c sigmoid(teacher score)``, the teacher's
  confidence that an object is there (a soft version of the positives; the student's scores are not
  used);
* taps ``"@boxes"`` alone: every anchor point counts equally (``w_a = 1``), background included.

Unlike the official sum over positives, the loss is a weighted *mean* over anchor points, so its scale
does not change with the number of objects in a batch: the official value is this one times
``sum_a w_a``, and the paper's weight 0.25 on that sum becomes ``0.25 sum_a w_a`` here. As a weighted
mean per anchor it compares with Ultralytics' DFL term (gain 1.5), a start for the term weight until
a recipe is calibrated. ``T = 10`` is the paper's temperature.

``@boxes`` is (B, 4 * reg_max, anchors), laid out (B, 4, reg_max, anchors) as Ultralytics' DFL reads it.
YOLO26 heads regress boxes directly (``reg_max = 1``): there is no distribution to distil.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses._common import positive
from distill.losses.base import DistillLoss

YOLO26_HINT = (
    "ld needs box distributions (DFL, reg_max > 1); YOLO26 heads regress boxes directly "
    "— use score_kd/fgd instead"
)


def side_kl(
    student_boxes: torch.Tensor, teacher_boxes: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``(B, 4, A)`` per-side KL(teacher || student), averaged over the bins, times ``T^2``, of box
    logits ``(B, 4 * reg_max, A)``."""
    batch, channels, anchors = student_boxes.shape
    reg_max = channels // 4
    s = student_boxes.float().view(batch, 4, reg_max, anchors) / temperature
    t = teacher_boxes.detach().float().view(batch, 4, reg_max, anchors) / temperature
    kl = F.kl_div(
        F.log_softmax(s, dim=2), F.log_softmax(t, dim=2), reduction="none", log_target=True
    )
    return kl.mean(dim=2) * temperature**2


def ld_loss(
    student_boxes: torch.Tensor,
    teacher_boxes: torch.Tensor,
    temperature: float = 10.0,
    anchor_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """LD of box logits ``(B, 4 * reg_max, A)``: per-side KL averaged over sides, then a mean over
    anchor points weighted by ``anchor_weights`` ``(B, A)`` (uniform if ``None``)."""
    check_box_logits(student_boxes, teacher_boxes)
    per_anchor = side_kl(student_boxes, teacher_boxes, temperature).mean(dim=1)  # (B, A)
    if anchor_weights is None:
        return per_anchor.mean()
    weights = anchor_weights.detach().float()
    return (per_anchor * weights).sum() / weights.sum().clamp(min=1e-12)


def check_box_logits(student_boxes: torch.Tensor, teacher_boxes: torch.Tensor) -> None:
    if student_boxes.shape != teacher_boxes.shape or student_boxes.ndim != 3:
        raise DistillError(
            f"ld: needs box logits (B, 4 * reg_max, anchors) of equal shape, got student "
            f"{tuple(student_boxes.shape)} and teacher {tuple(teacher_boxes.shape)}; tap @boxes on "
            "both sides (same input size and reg_max)"
        )
    channels = student_boxes.shape[1]
    if channels % 4:
        raise DistillError(
            f"ld: box logits need 4 * reg_max channels, got {channels} in {tuple(student_boxes.shape)}; "
            "tap @boxes (the head's box-distribution logits), not @scores"
        )
    if channels // 4 < 2:
        raise DistillError(f"{YOLO26_HINT} (got reg_max = {channels // 4})")


@LOSSES.register(
    "ld",
    paper="Zheng et al., Localization Distillation for Dense Object Detection",
    year=2022,
    kind="logit",
    consumes="box-distribution logits (DFL heads), weighted by the teacher's class scores",
    inputs="box_distributions",
    identity="zero",
    taps='["@boxes", "@scores"] on both sides (teacher-score weights) or "@boxes" (uniform)',
    weight="uncalibrated: ~1.5, like Ultralytics' DFL gain (paper: 0.25 on a sum over positives, T=10)",
)
class LDLoss(DistillLoss):
    """Localization distillation on ``@boxes`` ``(B, 4 * reg_max, A)``, optionally with ``@scores``
    ``(B, num_classes, A)`` to weight anchor points by the teacher's confidence."""

    def __init__(self, temperature: float = 10.0) -> None:
        super().__init__()
        self.temperature = positive("ld", "temperature", temperature, "the paper uses 10")

    def forward(
        self,
        student: torch.Tensor | list[torch.Tensor],
        teacher: torch.Tensor | list[torch.Tensor],
    ) -> torch.Tensor:
        if isinstance(student, torch.Tensor) and isinstance(teacher, torch.Tensor):
            return ld_loss(student, teacher, self.temperature)
        if not (isinstance(student, (list, tuple)) and isinstance(teacher, (list, tuple))):
            raise DistillError(
                'ld: give both sides the same taps: "@boxes", or ["@boxes", "@scores"]'
            )
        if len(student) != 2 or len(teacher) != 2:
            raise DistillError(
                f'ld: list taps must be ["@boxes", "@scores"], got {len(student)} student and '
                f"{len(teacher)} teacher tensors"
            )
        (student_boxes, _), (teacher_boxes, teacher_scores) = student, teacher
        if teacher_scores.ndim != 3 or teacher_scores.shape[::2] != teacher_boxes.shape[::2]:
            raise DistillError(
                f"ld: the second tap must be @scores (B, num_classes, anchors) matching @boxes "
                f"{tuple(teacher_boxes.shape)}, got {tuple(teacher_scores.shape)}"
            )
        weights = torch.sigmoid(teacher_scores.detach().float()).amax(dim=1)  # (B, A)
        return ld_loss(student_boxes, teacher_boxes, self.temperature, weights)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
