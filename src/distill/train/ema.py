"""An exponential moving average (EMA) of the student's weights, as Ultralytics' and timm's trainers keep.

After every optimizer step each floating-point entry ``v`` of the copy's state dict (parameters and
buffers such as BatchNorm statistics) moves towards the student's ``m``: ``v = d * v + (1 - d) * m``;
integer entries (BatchNorm's batch counters) are copied. The decay ramps up with the number of updates
``n``, ``d = decay * (1 - exp(-n / tau))``, so early on the average follows the fast-changing weights and
later it smooths them (Ultralytics' ``ModelEMA``: decay 0.9999, tau 2000). With ``train.ema`` set, the
trainer evaluates, checkpoints and hands over the average, not the raw weights.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class WeightEMA:
    """An EMA copy of ``model`` (``.module``, eval mode, no gradients); :meth:`update` after each step."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay!r}")
        if tau <= 0:
            raise ValueError(f"EMA tau must be positive, got {tau!r}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.tau = float(decay), float(tau)
        self.updates = 0

    def factor(self) -> float:
        """The decay ``d`` the last update used (0 before any)."""
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model`` (same architecture as the copy)."""
        self.updates += 1
        weight = 1.0 - self.factor()
        current = model.state_dict()
        for key, value in self.module.state_dict().items():
            new = current[key].detach()
            if value.dtype.is_floating_point:
                value.lerp_(new.to(value.dtype), weight)
            else:
                value.copy_(new)
