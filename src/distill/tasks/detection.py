"""Object detection with Ultralytics YOLO models (the ``yolo`` extra), driven by distill's distiller and trainer.

Batches are Ultralytics' own (``distill.data.detection``): ``img`` (B, 3, H, W) uint8, ``cls`` (N, 1),
``bboxes`` (N, 4) normalised xywh, ``batch_idx`` (N,), plus ``im_file``/``ori_shape``/``ratio_pad`` for
evaluation. The task loss is the model's own Ultralytics loss (task-aligned assigner, BCE class loss, CIoU +
DFL box loss), per image. Named outputs for taps (``@name``):

* ``@p3``, ``@p4``, ``@p5``: the neck maps fed to the Detect head (B, C_l, H_l, W_l), named by stride 2^l;
* ``@scores``: the head's class logits (B, nc, A), A = sum_l H_l W_l in the order p3, p4, p5, row-major;
* ``@boxes``: the head's box-distribution logits (B, 4 * reg_max, A) (DFL bins; reg_max = 1 for YOLO26,
  whose head regresses boxes directly);
* end-to-end heads (YOLO26) also give ``@one2one_scores`` and ``@one2one_boxes``; ``@scores``/``@boxes`` are
  the one-to-many branch.

``Batch.extras`` carries the ground truth for losses that declare it: ``boxes`` (N, 4) normalised xyxy in
[0, 1] of the network input, ``box_index`` (N,) the image each box belongs to, ``box_labels`` (N,) class ids.
Evaluation (mAP50-95, mAP50, precision, recall, in %) reuses Ultralytics' ``DetectionValidator`` (NMS,
matching, COCO-style 101-point AP), so the numbers are those ``yolo val`` reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError
from distill.models.yolo import default_args, detect_head
from distill.tasks import TASKS
from distill.tasks.base import Batch, Task, TeacherPredictions
from distill.tasks.detection_eval import validate

TARGET_KEYS = ("batch_idx", "cls", "bboxes")
EVAL_KEYS = ("im_file", "ori_shape", "ratio_pad", "resized_shape")


def _xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    xy, wh = boxes[:, :2], boxes[:, 2:] / 2
    return torch.cat([xy - wh, xy + wh], dim=1)


@TASKS.register(
    "detection",
    description="Ultralytics YOLO: the model's own loss; @p3/@p4/@p5, @scores, @boxes; mAP50-95, mAP50",
)
class DetectionTask(Task):
    """YOLO detection. ``conf``/``iou``/``max_det`` are the NMS settings of evaluation (Ultralytics' val defaults)."""

    name = "detection"
    primary_metric = "map50_95"
    augments_in_loader = True  # Ultralytics' mosaic, HSV and flips: no teacher cache
    # the large batch `distill compare` times (256 images through a detector take seconds)
    latency_batch = 16

    def __init__(self, conf: float = 0.001, iou: float = 0.7, max_det: int = 300) -> None:
        for key, value in (("conf", conf), ("iou", iou)):
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise DistillError(
                    f"detection: {key} must be in [0, 1], got {value!r}; Ultralytics validates with "
                    "conf 0.001 and iou 0.7"
                )
        if not (isinstance(max_det, int) and max_det > 0):
            raise DistillError(
                f"detection: max_det must be a positive int, got {max_det!r}; use 300"
            )
        self.conf, self.iou, self.max_det = float(conf), float(iou), max_det
        self._student: nn.Module | None = None
        self._criterion: Any = None
        self._criterion_device: torch.device | None = None
        self._items: dict[str, torch.Tensor] = {}

    def bind(self, student: nn.Module) -> None:
        """Use ``student``'s own Ultralytics loss as the task loss (the distiller calls this once).

        The loss is built at its first use, on the device the student's parameters are on then, and
        again if the student has moved since: Ultralytics' loss keeps tensors on the device it was built
        for, and at ``bind`` the student is still on the CPU.
        """
        detect_head(student)
        if getattr(student, "args", None) is None or isinstance(student.args, dict):
            student.args = default_args()
        self._student, self._criterion, self._criterion_device = student, None, None

    def criterion(self) -> Any:
        """The student's Ultralytics loss, built for the device its parameters are on now."""
        if self._student is None:
            raise DistillError(
                "the detection task has no loss yet; bind it to the student first (task.bind(student)), "
                "which Distiller does"
            )
        param = next(self._student.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        if self._criterion is None or device != self._criterion_device:
            self._criterion, self._criterion_device = self._student.init_criterion(), device
        return self._criterion

    def split(self, batch: Any) -> Batch:
        if not isinstance(batch, Mapping) or not all(k in batch for k in ("img", *TARGET_KEYS)):
            keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise DistillError(
                f"detection batches are Ultralytics dicts with img, cls, bboxes and batch_idx, got {keys}; "
                "use a detection dataset (data.name: yolo, coco or scenes)"
            )
        image = batch["img"]
        inputs = image.float() / 255 if not image.is_floating_point() else image
        targets = {k: batch[k] for k in (*TARGET_KEYS, *EVAL_KEYS) if k in batch}
        boxes = batch["bboxes"].float().reshape(-1, 4)
        extras = {
            "boxes": _xywh_to_xyxy(boxes).clamp(0, 1),
            "box_index": batch["batch_idx"].long().reshape(-1),
            "box_labels": batch["cls"].long().reshape(-1),
        }
        return Batch(inputs=inputs, targets=targets, extras=extras)

    def forward(self, model: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        head = detect_head(model)
        out = model(inputs)
        raw = out[1] if isinstance(out, (tuple, list)) else out  # eval mode: (decoded, raw)
        return named_outputs(raw, head)

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        criterion = self.criterion()
        preds = raw_outputs(outputs)
        total, items = criterion(preds, batch.targets)
        self._items = {k: v.detach() for k, v in items.items()}
        return total.sum() / max(len(batch), 1)  # Ultralytics returns the sum times the batch size

    def batch_metrics(
        self, outputs: dict[str, torch.Tensor], batch: Batch
    ) -> dict[str, torch.Tensor]:
        return {k.removesuffix("_loss"): v for k, v in self._items.items()}

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[Any],
        teacher: nn.Module | TeacherPredictions | None = None,
        device: torch.device | str = "cpu",
    ) -> dict[str, float]:
        """mAP50-95, mAP50, precision and recall (%) with Ultralytics' validator; ``teacher`` is not used."""
        return validate(self, model, loader, device)


def named_outputs(raw: Any, head: nn.Module) -> dict[str, torch.Tensor]:
    """Ultralytics' raw head output (``{boxes, scores, feats}`` or ``{one2many: ..., one2one: ...}``) as named tensors."""
    branches = raw if "one2many" in raw else {"one2many": raw}
    many = branches["one2many"]
    named: dict[str, torch.Tensor] = {}
    for stride, feature in zip(head.stride.tolist(), many["feats"], strict=True):
        named[f"p{round(math.log2(stride))}"] = feature
    named["scores"], named["boxes"] = many["scores"], many["boxes"]
    if "one2one" in branches:
        named["one2one_scores"] = branches["one2one"]["scores"]
        named["one2one_boxes"] = branches["one2one"]["boxes"]
    return named


def raw_outputs(outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The inverse of :func:`named_outputs`: what Ultralytics' loss takes."""
    levels = sorted(
        (k for k in outputs if k[0] == "p" and k[1:].isdigit()), key=lambda k: int(k[1:])
    )
    feats = [outputs[k] for k in levels]
    many = {"boxes": outputs["boxes"], "scores": outputs["scores"], "feats": feats}
    if "one2one_scores" not in outputs:
        return many
    one = {"boxes": outputs["one2one_boxes"], "scores": outputs["one2one_scores"], "feats": feats}
    return {"one2many": many, "one2one": one}
