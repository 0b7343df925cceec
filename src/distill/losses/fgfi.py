"""Wang et al., "Distilling Object Detectors with Fine-grained Feature Imitation", CVPR 2019 (FGFI).

The student imitates the teacher's feature map only at the locations near objects, where the
teacher's knowledge about detection lives; the background, which dominates a plain hint loss
(``fitnet``), is left out:

    L = sum_{b, c, h, w} I_{b,h,w} (s_{b,c,h,w} - t_{b,c,h,w})^2 / (2 sum_{b,h,w} I_{b,h,w})

with ``I`` the 0/1 imitation mask. As in the authors' code (twangnh/Distilling-Object-Detectors,
``lib/model/faster_rcnn/faster_rcnn.py``: ``norms = mask_batch.sum() * 2``) the squared error is summed
over channels and divided by twice the number of masked locations, not by the element count.

The paper builds ``I`` from anchors: for each ground-truth box, the anchors whose IoU with it exceeds
``psi = 0.5`` times the best anchor's IoU mark their location. Anchor-free heads (YOLOv8, YOLO11,
YOLO26) have one anchor *point* per cell, so here ``I`` marks the cells whose centre lies inside a
ground-truth box (the points the YOLOv8 assigner considers for that box) plus the cell holding each
box's centre, so that a box smaller than a cell still counts. A batch without boxes gives 0.

Paper defaults: imitation weight ``lambda = 0.01`` (the term weight); the student feature goes through
a full adaptation layer (a 3x3 conv), i.e. the term's ``conv3x3`` projector. ``fitnet`` on the same
taps is the plain (all-locations) imitation baseline.
"""

from __future__ import annotations

import torch

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses._boxes import centre_masks, check_boxes
from distill.losses.base import DistillLoss


def fgfi_loss(
    student_maps: torch.Tensor, teacher_maps: torch.Tensor, imitation_mask: torch.Tensor
) -> torch.Tensor:
    """Masked squared error, channel-summed, over ``2 *`` the masked location count (0 when none);
    maps ``(B, C, H, W)``, mask ``(B, H, W)`` of 0/1."""
    diff = student_maps.float() - teacher_maps.detach().float()
    mask = imitation_mask.float()[:, None]
    return (diff.pow(2) * mask).sum() / (2 * mask.sum()).clamp(min=1)


@LOSSES.register(
    "fgfi",
    paper="Wang et al., Distilling Object Detectors with Fine-grained Feature Imitation",
    year=2019,
    kind="feature",
    consumes="neck feature maps at near-object locations (from ground-truth boxes)",
    inputs="maps",
    identity="zero",
    taps="one term per neck level (@p3, @p4, @p5) with projector conv3x3 (the paper's adaptation layer)",
    weight="0.01 (paper)",
)
class FGFILoss(DistillLoss):
    """Fine-grained feature imitation on neck maps ``(B, C, H, W)`` of equal shape after the projector."""

    extra_inputs = ("boxes", "box_index")

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        boxes: torch.Tensor,
        box_index: torch.Tensor,
    ) -> torch.Tensor:
        if student.ndim != 4 or student.shape != teacher.shape:
            raise DistillError(
                f"fgfi: needs neck maps (B, C, H, W) of equal shape, got student "
                f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}; tap the same level on "
                "both sides and give the term a projector (conv3x3, the paper's adaptation layer)"
            )
        batch, _, height, width = student.shape
        boxes, box_index = check_boxes(
            boxes.to(student.device), box_index.to(student.device), batch, "fgfi"
        )
        mask = centre_masks(boxes, box_index, batch, height, width)
        return fgfi_loss(student, teacher, mask)
