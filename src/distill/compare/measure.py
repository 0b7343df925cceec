"""One row of the comparison: a pipeline's model measured with the task's own evaluation (its extra
metrics kept, e.g. macro-F1) and the shared latency harness, or the reason it has no model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from distill.compare.context import Context, Produced
from distill.compare.named import packed
from distill.models import count_parameters
from distill.report import (
    measure_row,
)
from distill.report.measure import serialized_size


def _measure(
    ctx: Context,
    name: str,
    product: Produced | str,
    repeats: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    if isinstance(product, str):
        return {"name": name, "pipeline": name, "runtime": None, "status": product}
    ctx.console.print(f"measuring {product.name}", soft_wrap=True)
    model, example = product.model, ctx.example
    params, size = product.params, product.size_bytes
    # named inputs: timed through a packing wrapper, sizes of the model
    if isinstance(example, Mapping):
        if params is None:
            params, size = count_parameters(model), serialized_size(model)
        model, example = packed(model, example)
    task = _Recording(ctx.task)
    row = measure_row(
        product.name,
        model,
        task,
        ctx.test_loader(),
        example,
        ctx.teacher_predictions,
        pipeline=name,
        runtime=product.runtime,
        params=params,
        size_bytes=size,
        large_batch=ctx.large_batch,
        repeats=repeats,
        device=device if product.runtime == "torch" else "cpu",  # onnxruntime wrappers: CPU
    )
    extra = {
        k: v
        for k, v in task.metrics.items()
        if k not in (*_ROW_METRICS, task.primary_metric, "images")
    }
    row.update({k: round(v, 2) for k, v in extra.items()})  # e.g. macro_f1 (text), top5
    row["artefact"] = str(product.artefact) if product.artefact else None
    row["precision"] = product.precision
    return row


_ROW_METRICS = ("top1", "nll", "ece", "agreement", "samples")  # already in measure_row's row


class _Recording:
    """A task whose ``evaluate`` keeps the metrics it returned, so a row can add the task's own (macro-F1)."""

    def __init__(self, task: Any) -> None:
        self.task, self.metrics = task, {}

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        self.metrics = self.task.evaluate(*args, **kwargs)
        return self.metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)
