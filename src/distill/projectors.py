"""Projectors map student features to the teacher's shape for feature terms (FitNet's regressor).

A projector is built from the two feature shapes seen on an example batch, trains with the student,
and is never exported with it. ``PROJECTORS`` factories take ``(student_shape, teacher_shape)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.registry import Registry

PROJECTORS: Registry = Registry("projector")


class ConvProjector(nn.Module):
    """``k x k`` conv + BN from ``C_s`` to ``C_t`` channels; resizes to the teacher's ``H x W`` if needed."""

    def __init__(
        self, in_channels: int, out_channels: int, size: tuple[int, int], kernel_size: int = 1
    ) -> None:
        super().__init__()
        self.size = tuple(size)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_s, H_s, W_s) -> (B, C_t, H_t, W_t)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.bn(self.conv(x))


def _require_rank(name: str, shape: torch.Size, rank: int) -> None:
    if len(shape) != rank:
        raise DistillError(
            f"projector {name!r} needs {rank}-D features, got shape {tuple(shape)}; "
            f"use {'linear' if len(shape) != 4 else 'conv1x1'} instead"
        )


@PROJECTORS.register("conv1x1")
def conv1x1(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    _require_rank("conv1x1", student_shape, 4)
    _require_rank("conv1x1", teacher_shape, 4)
    return ConvProjector(student_shape[1], teacher_shape[1], tuple(teacher_shape[-2:]), 1)


@PROJECTORS.register("conv3x3")
def conv3x3(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    _require_rank("conv3x3", student_shape, 4)
    _require_rank("conv3x3", teacher_shape, 4)
    return ConvProjector(student_shape[1], teacher_shape[1], tuple(teacher_shape[-2:]), 3)


@PROJECTORS.register("linear")
def linear(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    """Linear map on the last dimension: ``(..., D_s) -> (..., D_t)`` (vectors or token states)."""
    if len(student_shape) != len(teacher_shape) or student_shape[:-1] != teacher_shape[:-1]:
        raise DistillError(
            f"projector 'linear' maps only the last dimension, but shapes {tuple(student_shape)} and "
            f"{tuple(teacher_shape)} differ elsewhere; use conv1x1 for feature maps"
        )
    return nn.Linear(student_shape[-1], teacher_shape[-1], bias=False)


@PROJECTORS.register("identity")
def identity(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    return nn.Identity()


def build_projector(name: str, student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    return PROJECTORS.get(name)(student_shape, teacher_shape)
