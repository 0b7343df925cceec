"""Every row of a comparison is measured by these functions, so rows are comparable."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from distill.models import count_parameters
from distill.tasks.base import Task
from distill.train.checkpoint import state_tensors


def serialized_size(model: nn.Module) -> int:
    """Bytes of the model's weights as a safetensors file (what ships to the device)."""
    return len(safetensors_bytes(state_tensors(model.state_dict())))


@torch.inference_mode()
def latency_ms(
    model: nn.Module, example: torch.Tensor, batch_size: int, repeats: int = 30, warmup: int = 5
) -> float:
    """Median wall time (ms) of one forward pass at ``batch_size`` on CPU, after ``warmup`` passes.

    ``example`` is one input ``(C, H, W)``; threads are PyTorch's default (all cores).
    """
    model = model.eval().cpu()
    x = example.unsqueeze(0).expand(batch_size, *example.shape).contiguous().cpu()
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(
    name: str,
    model: nn.Module,
    task: Task,
    test_loader: Iterable[Any],
    example: torch.Tensor,
    teacher: nn.Module | None = None,
    large_batch: int = 256,
    repeats: int = 30,
) -> dict[str, Any]:
    """One report row: task metrics, ``params``, ``size_bytes``, ``latency_ms_b1``/``_b{large_batch}``."""
    metrics = task.evaluate(model, test_loader, teacher)
    large_repeats = max(5, repeats // 3)
    return {
        "name": name,
        "accuracy": round(metrics["top1"], 2),
        "params": count_parameters(model),
        "size_bytes": serialized_size(model),
        "latency_ms_b1": round(latency_ms(model, example, 1, repeats), 4),
        f"latency_ms_b{large_batch}": round(
            latency_ms(model, example, large_batch, large_repeats), 3
        ),
        "agreement": round(metrics["agreement"], 2) if "agreement" in metrics else None,
        "nll": round(metrics["nll"], 4),
        "ece": round(metrics["ece"], 2),
    }
