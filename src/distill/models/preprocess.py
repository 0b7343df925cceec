"""Input preprocessing that travels with a pretrained model: its normalisation (and optionally its
input size), applied inside the model so every model reads the same raw ``[0, 1]`` batch.

An ImageNet-pretrained teacher expects ``(x - mean) / std`` with ImageNet's statistics, a student
built otherwise expects something else (or nothing): distill's datasets give every model the same
``[0, 1]`` images, and each pretrained ``torchvision:`` / ``timm:`` model normalises them itself.
:func:`add_input_norm` puts an :class:`InputNorm` module on the model (``model.input_norm``) and a
forward pre-hook that calls it, so the model's module names, taps and ``state_dict`` stay as they were
(the statistics are non-persistent buffers, rebuilt from the recipe), and an exported model (ONNX,
``torch.export``) carries the normalisation, since exporting runs the hook.

The model option ``normalize`` chooses: ``auto`` (the default) normalises only a model built with
``pretrained: true`` (the weights were trained on normalised inputs; a randomly initialised model keeps
the behaviour it always had), ``always`` also a random one (a student meant to see what a pretrained
teacher sees), ``none`` never. ``resize: true`` also resizes the input (bilinear) to the pretrained
configuration's size (224x224 for most ImageNet models) when it differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import DistillError

NORMALIZE = ("auto", "always", "none")


class InputNorm(nn.Module):
    """``(x - mean) / std`` per channel, after a bilinear resize to ``size`` when given."""

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], size: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        mean = [round(v, 4) for v in self.mean.flatten().tolist()]
        std = [round(v, 4) for v in self.std.flatten().tolist()]
        return f"mean={mean}, std={std}, size={self.size}"


def _normalize_input(model: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: the first input through ``model.input_norm``."""
    return (model.input_norm(args[0]), *args[1:])


def check_normalize(name: str, normalize: Any, resize: Any) -> None:
    """``normalize`` must be one of :data:`NORMALIZE` and ``resize`` a bool."""
    if normalize not in NORMALIZE:
        raise DistillError(
            f"{name}: invalid normalize={normalize!r}; expected one of {', '.join(NORMALIZE)}"
        )
    if not isinstance(resize, bool):
        raise DistillError(f"{name}: invalid resize={resize!r}; expected true or false")


def wants_norm(normalize: str, pretrained: bool) -> bool:
    """Whether the model gets an :class:`InputNorm` (see the module docstring)."""
    return normalize == "always" or (normalize == "auto" and pretrained)


def channel_stats(values: Sequence[float], in_channels: int) -> list[float]:
    """RGB statistics for ``in_channels`` inputs: as given for 3, their average for any other count
    (the first convolution of a pretrained model adapted to 1 channel sums the RGB filters)."""
    values = [float(v) for v in values]
    if len(values) == in_channels:
        return values
    return [sum(values) / len(values)] * in_channels


def add_input_norm(
    model: nn.Module,
    mean: Sequence[float],
    std: Sequence[float],
    in_channels: int,
    size: Sequence[int] | None = None,
) -> nn.Module:
    """``model`` with an :class:`InputNorm` (``model.input_norm``) applied to its input by a forward
    pre-hook; ``size`` (H, W) also resizes the input to it."""
    hw = (int(size[-2]), int(size[-1])) if size is not None else None
    model.input_norm = InputNorm(
        channel_stats(mean, in_channels), channel_stats(std, in_channels), hw
    )
    model.register_forward_pre_hook(_normalize_input)
    return model
