"""``train.device`` and ``--device``: a device name checked against what torch and the machine have,
and ``auto`` resolved."""

from __future__ import annotations

import torch

from distill.data.base import eval_loader as eval_loader  # re-exported for the assembly path
from distill.errors import ConfigError, first_line
from distill.train.distributed import DistInfo, pick_device


def check_device(device: str, where: str = "train.device") -> None:
    """``device`` (``train.device``, or the option named by ``where`` such as ``--device``) names a device
    torch knows and, for CUDA, one that is there."""
    if device == "auto":
        return
    # the fix in the setting's own syntax: train.device=cpu, --device cpu
    use = f"{where}{' ' if where.startswith('-') else '='}"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"{where} {device!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{where} is {device!r} but no CUDA GPU is visible; use {use}auto or cpu")
    try:  # a device type this PyTorch build or machine lacks (mps off Apple, cuda:7 of 1 GPU, xpu)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as err:
        raise ConfigError(
            f"{where} {device!r} is not available here ({first_line(err)}); use {use}auto or cpu"
        ) from None


def resolve_device(device: str, where: str = "--device") -> torch.device:
    """The device ``device`` names (``auto``: CUDA, else MPS, else the CPU), after :func:`check_device`."""
    check_device(device, where)
    return pick_device(device, DistInfo())
