"""mAP for the detection task through Ultralytics' own ``DetectionValidator`` (NMS, IoU matching, AP).

Only the validator's per-batch steps are used (``postprocess``, ``update_metrics``, ``get_stats``), fed with
distill's loader, so the model, data and device stay distill's and the numbers are what ``yolo val`` reports.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError
from distill.models.yolo import detect_head, quiet

METRICS = {  # Ultralytics' key -> distill's (percent)
    "metrics/mAP50-95(B)": "map50_95",
    "metrics/mAP50(B)": "map50",
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
}


def make_validator(task: Any, model: nn.Module, names: dict[int, str], device: Any) -> Any:
    """A ``DetectionValidator`` set up for ``model`` without building Ultralytics' data or trainer."""
    from ultralytics.models.yolo.detect.val import DetectionValidator

    args = dict(
        conf=task.conf, iou=task.iou, max_det=task.max_det, plots=False, save_json=False,
        save_txt=False, verbose=False, task="detect",
    )  # fmt: skip
    with quiet():
        validator = DetectionValidator(args=args)
    validator.device = torch.device(device)
    validator.data = {"names": names, "val": ""}
    validator.training = True  # no dataset checks, no model fusing: distill's loop owns those
    # the validator reads only the class names and the end-to-end flag of the model: ONNX files and other
    # wrappers are evaluated like the PyTorch model they came from (exported YOLO files decode, not NMS)
    validator.init_metrics(SimpleNamespace(names=names, end2end=getattr(model, "end2end", False)))
    return validator


def class_names(model: nn.Module, loader: Any) -> dict[int, str]:
    """The data's class names (the loader's dataset), else the model's, else from its Detect head."""
    dataset = getattr(loader, "dataset", None)
    dataset = getattr(dataset, "dataset", dataset)  # the training loader's seeded view
    classes = getattr(dataset, "classes", None)
    if classes:
        return dict(enumerate(classes))
    names = getattr(model, "names", None)
    if isinstance(names, dict) and names:
        return names
    return {i: str(i) for i in range(detect_head(model).nc)}


@torch.no_grad()
def validate(
    task: Any, model: nn.Module, loader: Iterable[Any], device: torch.device | str
) -> dict[str, float]:
    """Evaluate ``model`` on ``loader`` (Ultralytics batches) in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    images = 0
    try:
        with quiet():
            validator = make_validator(task, model, class_names(model, loader), device)
            for raw in loader:
                batch = task.split(raw).to(device)
                out = model(batch.inputs)
                decoded = out[0] if isinstance(out, (tuple, list)) else out
                preds = validator.postprocess(decoded)
                targets = {**batch.targets, "img": batch.inputs}
                validator.update_metrics(preds, targets)
                images += len(batch)
            if not images:
                raise DistillError("evaluation data is empty; give a non-empty validation/test set")
            stats = validator.get_stats()
    finally:
        model.train(was_training)
    metrics = {ours: 100.0 * float(stats.get(theirs, 0.0)) for theirs, ours in METRICS.items()}
    metrics["images"] = float(images)
    return metrics
