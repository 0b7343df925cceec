"""Time models with named inputs (text: ``input_ids``, ``attention_mask`` ...) with the shared latency harness.

:func:`distill.export.measure_latency` repeats ONE input tensor (no batch dimension) to each batch size and
calls ``model(x)``. For a dict of ``(T,)`` inputs, :func:`packed` stacks them into one ``(k, T)`` tensor and
wraps the model so that ``model(x (B, k, T))`` calls it with the ``k`` named ``(B, T)`` slices; keyword
calls (the task's evaluation) pass through unchanged. ONNX rows stay :class:`~distill.export.OnnxModule`s,
so the harness still gives them one onnxruntime session per thread setting. Every row of a comparison goes
through the same wrapper, so they are timed alike.

(Once the harness takes a dict example itself, this module can go.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from distill.export.runtime import OnnxModule


def pack(example: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``{name: (T,)}`` -> ``(k, T)``, in the mapping's order (all inputs share one dtype, e.g. int64)."""
    values = list(example.values())
    assert len({v.dtype for v in values}) == 1, "named inputs to pack must share one dtype"
    return torch.stack(values)


def unpack(x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """``(B, k, T)`` -> ``{name: (B, T)}``."""
    return dict(zip(names, x.unbind(1), strict=True))


class _Unpacking(nn.Module):
    """A PyTorch model called with a packed ``(B, k, T)`` tensor or with keyword inputs."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, x: torch.Tensor | None = None, **inputs: torch.Tensor) -> Any:
        return self.model(**(unpack(x, self.names) if x is not None else inputs))


class PackedOnnxModule(OnnxModule):
    """An :class:`~distill.export.OnnxModule` that also takes its named inputs packed as ``(B, k, T)``."""

    def forward(self, x: Any = None, **inputs: torch.Tensor) -> torch.Tensor:
        # a packed (B, k, T) batch, also for one named input (k = 1: a causal LM's input_ids)
        if isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[1] == len(self.input_names):
            return super().forward(**unpack(x, self.input_names))
        return super().forward(x, **inputs)


def packed(model: nn.Module, example: Mapping[str, torch.Tensor]) -> tuple[nn.Module, torch.Tensor]:
    """``(wrapped model, packed example)`` for the harness (see the module docstring)."""
    if isinstance(model, OnnxModule):
        wrapped = PackedOnnxModule(model.path, model.threads)
        return wrapped, pack({n: example[n] for n in wrapped.input_names})
    return _Unpacking(model, list(example)), pack(example)
