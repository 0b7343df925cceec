"""Precision and speed switches of ``train:``: autocast dtype, the fp16 gradient scaler, TF32,
channels_last, the teacher's dtype and ``torch.compile``.

None of them changes what is computed, only in which number format and memory layout: weights and the
optimizer state stay float32, and checkpoints hold the same tensors whatever the switches.
"""

from __future__ import annotations

from typing import Any

import torch

from distill.distiller import Distiller
from distill.train.config import TrainConfig

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TEACHER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# fp16: after this many scaler-skipped steps in a row the scale has fallen from 2**16 below 2**-8, so
# the gradients are not overflowing but NaN/inf whatever the scale: train.on_nonfinite takes over
MAX_SCALER_SKIPS = 24


def autocast_dtype(config: TrainConfig) -> torch.dtype | None:
    """The forward pass's autocast dtype (None: float32, no autocast)."""
    return AUTOCAST[config.amp]


def make_scaler(config: TrainConfig, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, enabled for ``precision: fp16`` only (disabled, it passes everything through)."""
    return torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")


def prepare_models(distiller: Distiller, config: TrainConfig, device: torch.device) -> None:
    """Apply ``tf32``, ``channels_last``, ``teacher_dtype`` and ``compile`` to the distiller's models, in
    place (module names, hooks and state-dict keys are unchanged). Call after the projectors are built
    and before the optimizer: safe to call twice."""
    if config.tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    models = [distiller.student]
    if distiller.teacher is not None:
        models.append(distiller.teacher)
    if config.channels_last:
        for model in models:
            model.to(memory_format=torch.channels_last)
    distiller.cast_teacher(TEACHER_DTYPES[config.teacher_dtype])
    if config.compile:
        for model in models:
            # nn.Module.compile compiles the call in place: names, taps (forward hooks, which dynamo
            # traces) and checkpoints see the same module
            model.compile()


def channels_last_inputs(inputs: Any) -> Any:
    """4-D image tensors in channels_last memory format; anything else as it is."""
    if isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
        return inputs.contiguous(memory_format=torch.channels_last)
    return inputs
