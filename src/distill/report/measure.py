"""Every row of a comparison is measured by these functions, so rows are comparable."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from distill.compress.prune import count_nonzero
from distill.export import latency_key, measure_latency
from distill.models import count_parameters
from distill.tasks.base import Task, TeacherPredictions
from distill.train.checkpoint import state_tensors


def serialized_size(model: nn.Module) -> int:
    """Bytes of the model's weights as a safetensors file (what ships to the device)."""
    return len(safetensors_bytes(state_tensors(model.state_dict())))


def latency_ms(
    model: nn.Module, example: torch.Tensor, batch_size: int, repeats: int = 30, warmup: int = 5
) -> float:
    """Median wall time (ms) of one forward pass at ``batch_size`` on CPU, after ``warmup`` passes.

    ``example`` is one input ``(C, H, W)``; threads are PyTorch's default (all cores). One cell of the
    shared harness, :func:`distill.export.measure_latency`.
    """
    found = measure_latency(model.cpu(), example, (batch_size,), (None,), warmup, repeats)
    return found[latency_key(batch_size, None)]


def measure(
    name: str,
    model: nn.Module,
    task: Task,
    test_loader: Iterable[Any],
    example: torch.Tensor,
    teacher: nn.Module | TeacherPredictions | None = None,
    large_batch: int = 256,
    repeats: int = 30,
) -> dict[str, Any]:
    """One report row: task metrics, ``params``, ``size_bytes``, ``latency_ms_b1``/``_b{large_batch}``."""
    metrics = task.evaluate(model, test_loader, teacher)
    large_repeats = max(5, repeats // 3)
    return {
        "name": name,
        "accuracy": round(metrics[task.primary_metric], 2),
        "params": count_parameters(model),
        "size_bytes": serialized_size(model),
        "latency_ms_b1": round(latency_ms(model, example, 1, repeats), 4),
        f"latency_ms_b{large_batch}": round(
            latency_ms(model, example, large_batch, large_repeats), 3
        ),
        "agreement": round(metrics["agreement"], 2) if "agreement" in metrics else None,
        "nll": round(metrics["nll"], 4) if "nll" in metrics else None,
        "ece": round(metrics["ece"], 2) if "ece" in metrics else None,
    }


def latency_row(
    model: nn.Module, example: torch.Tensor, large_batch: int = 256, repeats: int = 30
) -> dict[str, float]:
    """Latency keys of a report row from the shared harness (``distill.export.measure_latency``).

    ``latency_ms_b1_t1`` (batch 1, one thread) and friends, with p90s, plus the demo's ``latency_ms_b1`` and
    ``latency_ms_b{large_batch}`` (all threads). The harness itself needs no onnxruntime for torch models.
    """
    found = measure_latency(
        model,
        example,
        batch_sizes=(1, large_batch),
        threads=(1, None),
        warmup=min(10, repeats),
        repeats=repeats,
    )
    found = {k: round(float(v), 4) for k, v in found.items()}
    found["latency_ms_b1"] = found["latency_ms_b1_tall"]
    found[f"latency_ms_b{large_batch}"] = found[f"latency_ms_b{large_batch}_tall"]
    return found


def evaluate_on(
    task: Task,
    model: nn.Module,
    test_loader: Iterable[Any],
    teacher: nn.Module | TeacherPredictions | None,
    device: torch.device | str,
) -> dict[str, float]:
    """``task.evaluate`` with ``model`` (and the teacher) moved to ``device``, and both back on the CPU
    afterwards, where the latency harness times them."""
    device = torch.device(device)
    if device.type == "cpu":
        return task.evaluate(model, test_loader, teacher)
    frozen = teacher.teacher if isinstance(teacher, TeacherPredictions) else teacher
    try:
        model.to(device)
        if frozen is not None:
            frozen.to(device)
        return task.evaluate(model, test_loader, teacher, device)
    finally:
        model.cpu()
        if frozen is not None:
            frozen.cpu()


def measure_row(
    name: str,
    model: nn.Module,
    task: Task,
    test_loader: Iterable[Any],
    example: torch.Tensor,
    teacher: nn.Module | TeacherPredictions | None = None,
    *,
    pipeline: str,
    runtime: str = "torch",
    params: int | None = None,
    size_bytes: int | None = None,
    large_batch: int = 256,
    repeats: int = 30,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """A comparison row: :func:`measure`'s keys plus ``pipeline``, ``runtime``, ``nonzero_params`` and
    the shared harness's latencies; the model may be any module, e.g. an onnxruntime wrapper.

    ``params``/``size_bytes`` default to the module's own (parameter count, safetensors bytes); pass them
    for wrappers (an ONNX file's size on disk, the source model's parameter count). ``device``: where
    the task metrics are computed (a torch model only); latency is always timed on the CPU.
    """
    metrics = evaluate_on(task, model, test_loader, teacher, device)
    own_params = list(model.parameters())
    nonzero = count_nonzero(model)[0] if own_params else None
    row: dict[str, Any] = {
        "name": name,
        "pipeline": pipeline,
        "runtime": runtime,
        "accuracy": round(metrics[task.primary_metric], 2),  # top-1; detection: mAP50-95
        "params": params if params is not None else count_parameters(model),
        "nonzero_params": nonzero,
        "size_bytes": size_bytes if size_bytes is not None else serialized_size(model),
        "agreement": round(metrics["agreement"], 2) if "agreement" in metrics else None,
        "nll": round(metrics["nll"], 4) if "nll" in metrics else None,
        "ece": round(metrics["ece"], 2) if "ece" in metrics else None,
        "status": "ok",
    }
    row.update(latency_row(model, example, large_batch, repeats))
    return row
