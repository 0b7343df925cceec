"""Classification-score distillation for dense detectors with sigmoid class scores (YOLO, GFL, PP-YOLOE).

YOLO heads score each class on its own with a sigmoid (binary cross-entropy), so the softmax KD of
Hinton et al. (2015) does not apply: the student's per-class probabilities learn the teacher's as soft
binary targets, at every anchor point:

    p_t = sigmoid(z_t / T),  p_s = sigmoid(z_s / T)
    l_{a,c} = BCE(p_s, p_t) |p_s - p_t|^beta                  per anchor a and class c
    L = T^2 * sum_{a,c} w_a l_{a,c} / sum_a w_a

summed over classes and averaged over the anchor points of the batch (``w_a = 1``), as the
PP-YOLOE distillation does (PaddleDetection ``ppdet/slim/distill_loss.py``, ``DistillPPYOLOELoss``,
ported to mmrazor as ``QualityFocalLoss``: ``quality_focal_loss(..., num_total_pos=None)``, Xu et al.,
"PP-YOLOE: An evolved version of YOLO", 2022). ``beta = 2`` is that port's quality-focal form (Li et
al., Generalized Focal Loss, NeurIPS 2020); the default ``beta = 0`` is the plain BCE. The ``T^2``
factor keeps the gradient scale when ``T`` changes, as in KD.

``teacher_weighted=True`` weights each anchor by the teacher's highest class probability
``w_a = max_c p_t``, which concentrates the loss on the anchors the teacher takes for objects (its
"positives") instead of the thousands of background points; the sum over anchors is then divided by
the teacher's soft count of objects, close to how Ultralytics normalises its own class loss (by the
sum of the target scores). The PP-YOLOE distiller divides by the student assigner's positive count,
which a tensor-in loss does not see; its weight (4, with ``beta = 2``) is for that normalisation.

Note: the BCE of a soft target is never 0 (it is the target's entropy at best), so the value is not
zero for identical inputs, but its gradient is; compare runs by the task metric, not by this value.
Taps: ``@scores`` (B, num_classes, anchors), the head's pre-sigmoid class logits, on both sides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses._common import positive
from distill.losses.base import DistillLoss


def score_kd_loss(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    temperature: float = 1.0,
    beta: float = 0.0,
    teacher_weighted: bool = False,
) -> torch.Tensor:
    """Sigmoid soft-target BCE of class logits ``(B, C, A)``: summed over classes, averaged over anchors
    (weighted by the teacher's top probability if ``teacher_weighted``), times ``T^2``."""
    if student_scores.shape != teacher_scores.shape or student_scores.ndim != 3:
        raise DistillError(
            f"score_kd: needs class logits (B, num_classes, anchors) of equal shape, got student "
            f"{tuple(student_scores.shape)} and teacher {tuple(teacher_scores.shape)}; tap @scores on "
            "both sides (same input size, same class list)"
        )
    s = student_scores.float() / temperature
    target = torch.sigmoid(teacher_scores.detach().float() / temperature)
    loss = F.binary_cross_entropy_with_logits(s, target, reduction="none")
    if beta:
        loss = loss * (torch.sigmoid(s) - target).abs().pow(beta)
    per_anchor = loss.sum(dim=1)  # (B, A)
    if teacher_weighted:
        weight = target.amax(dim=1)
        return temperature**2 * (per_anchor * weight).sum() / weight.sum().clamp(min=1e-12)
    return temperature**2 * per_anchor.mean()


@LOSSES.register(
    "score_kd",
    paper="Xu et al., PP-YOLOE: An evolved version of YOLO (score distillation of its distiller)",
    year=2022,
    kind="logit",
    consumes="detection class logits (sigmoid scores per anchor)",
    inputs="anchors",
    identity=None,  # the soft-target BCE bottoms out at the teacher's entropy
    taps="@scores on both sides",
    weight="uncalibrated: ~0.5 with teacher_weighted, like Ultralytics' cls gain (PP-YOLOE: 4, beta=2)",
)
class ScoreKDLoss(DistillLoss):
    """Soft-target sigmoid BCE on detection class logits ``(B, num_classes, anchors)``."""

    def __init__(
        self, temperature: float = 1.0, beta: float = 0.0, teacher_weighted: bool = False
    ) -> None:
        super().__init__()
        positive("score_kd", "temperature", temperature, "1 is typical")
        if not beta >= 0:
            raise ValueError(
                f"score_kd: beta must be >= 0, got {beta}; 0 is plain BCE, 2 the quality-focal form"
            )
        self.temperature = float(temperature)
        self.beta = float(beta)
        self.teacher_weighted = bool(teacher_weighted)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return score_kd_loss(student, teacher, self.temperature, self.beta, self.teacher_weighted)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, beta={self.beta}, "
            f"teacher_weighted={self.teacher_weighted}"
        )
