"""A batch of model inputs as the exporter and onnxruntime see it: one tensor ``(B, ...)`` or a mapping of
named tensors (text: ``input_ids``, ``attention_mask`` ``(B, T)``), whatever ``task.split(batch).inputs``
gives, and the model's first output tensor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import torch
from torch import nn

Inputs: TypeAlias = torch.Tensor | Mapping[str, torch.Tensor]  # one batch of model inputs


def first_output(out: Any) -> torch.Tensor:
    """The tensor a task reads from a model's output: ``logits`` of a mapping, else its first value; the
    first element of a tuple/list (recursively); a tensor as is."""
    if isinstance(out, Mapping):
        return first_output(out["logits"] if "logits" in out else next(iter(out.values())))
    if isinstance(out, (tuple, list)):
        return first_output(out[0])
    return out


def call_model(model: nn.Module, inputs: Inputs) -> Any:
    """``model(**inputs)`` for a mapping of named inputs, else ``model(inputs)``."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def batch_size(inputs: Inputs) -> int:
    """``B`` of a batch (the first dimension of its first tensor)."""
    first = next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs
    return int(first.shape[0])


def take(inputs: Inputs, n: int) -> Inputs:
    """The first ``n`` samples of a batch (every tensor of a mapping cut alike)."""
    if isinstance(inputs, Mapping):
        return {k: v[:n] for k, v in inputs.items()}
    return inputs[:n]


def to_cpu(inputs: Inputs) -> Inputs:
    if isinstance(inputs, Mapping):
        return {k: v.cpu() for k, v in inputs.items()}
    return inputs.cpu()
