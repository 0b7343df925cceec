"""Heo et al., "A Comprehensive Overhaul of Feature Distillation", ICCV 2019.

OFD distils **pre-ReLU** features: positive teacher responses are copied exactly, while negative ones
only need to stay negative, so the student is pulled up to a per-channel *margin* ``m`` (the expected
value of the teacher's negative responses) and never pushed below it. With ``T = max(t, m)`` (teacher
clipped at the margin) and the student mapped by a connector ``r`` (conv1x1 + BN):

    d_p(T, S) = (S - T)^2   unless  S <= T <= 0      (partial L2: no loss where both are "off")
    L = sum over levels i of  2^-(n-1-i) * (1/B) * sum_{b,c,h,w} d_p(T, r(s))

The margin of channel ``c``, for pre-ReLU responses ``x ~ N(mu_c, sigma_c^2)``, is
``E[x | x < 0] = mu - sigma * phi(mu/sigma) / Phi(-mu/sigma)`` (``-3 sigma`` when ``Phi(-mu/sigma) <= 0.001``).

Matches mdistiller ``distillers/OFD.py`` (``feat_loss``, ``ConnectorConvBN`` with its initialisation,
the ``1 / 2^(n-1-i)`` level weights, the teacher average-pooled to the student's size) and the authors'
``clovaai/overhaul-distillation`` loss (sum over elements divided by the batch size). **Difference:** the
official code reads ``mu_c, sigma_c`` from the teacher's BN layer before the ReLU (``bias``, ``|weight|``);
a loss here sees tensors, not layers, so ``build()`` estimates ``mu_c, sigma_c`` as the mean and standard
deviation of the teacher's features on the example batch (all samples and locations). That measures the
distribution the BN formula only assumes; call ``set_margins([ofd_margin(bn.bias, bn.weight), ...])``
after ``build()`` to use the BN statistics exactly as the paper.

Paper defaults: feature weight 1e-3 on CIFAR (the loss divided by 1000 in the authors' code; mdistiller
``FEAT_WEIGHT = 0.001``), 1e-4 on ImageNet; used with the cross-entropy, without a KD term.

Practical notes: tap the inputs of the ReLUs that end each stage (``<relu>:in``); the teacher tap must be
pre-ReLU (``build()`` warns when the teacher features have no negative values). Several stages can be
given as lists; the loss owns one connector per level, so no projector is needed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses.base import DistillLoss


def ofd_margin(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-channel ``E[x | x < 0]`` for ``x ~ N(mean, std^2)``; ``-3 std`` where ``P(x < 0) <= 0.001``."""
    m = torch.as_tensor(mean, dtype=torch.float64)
    s = torch.as_tensor(std, dtype=torch.float64).abs().clamp_min(1e-12)
    cdf = torch.special.ndtr(-m / s)
    pdf = torch.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
    margin = torch.where(cdf > 1e-3, m - s * pdf / cdf.clamp_min(1e-300), -3 * s)
    return margin.float()


def ofd_loss(
    student_features: torch.Tensor, teacher_features: torch.Tensor, margin: torch.Tensor
) -> torch.Tensor:
    """Partial L2 between connector output ``(B, C, H, W)`` and the teacher clipped at ``margin (C,)``,
    summed over channels and locations, averaged over samples."""
    s = student_features.float()
    target = torch.maximum(teacher_features.detach().float(), margin.float().view(1, -1, 1, 1))
    keep = (s > target) | (target > 0)
    return ((s - target).pow(2) * keep).sum() / s.shape[0]


def _levels(x: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    levels = list(x) if isinstance(x, (list, tuple)) else [x]
    for a in levels:
        if a.ndim != 4:
            raise ValueError(f"ofd: needs feature maps (B, C, H, W), got shape {tuple(a.shape)}")
    return levels


def _connector(c_in: int, c_out: int) -> nn.Sequential:
    """conv1x1 + BN, initialised as in the official code (He-normal over fan-out, BN 1 / 0)."""
    conv = nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / c_out))
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


@LOSSES.register(
    "ofd",
    paper="Heo et al., A Comprehensive Overhaul of Feature Distillation",
    year=2019,
    kind="feature",
    consumes="pre-ReLU features (one or more stages)",
    inputs="maps_list",
    identity=None,
    taps="pre-ReLU stage features (`<relu>:in` taps), as lists for several stages; no projector",
    weight="1e-3 on CIFAR, 1e-4 on ImageNet (paper), without a KD term",
)
class OFDLoss(DistillLoss):
    """Overhaul feature distillation: connector + margin-clipped partial L2 on one map or a list of maps."""

    needs_same_shape = False  # the connector maps C_s to C_t

    def __init__(self) -> None:
        super().__init__()
        self.connectors = nn.ModuleList()
        self.num_levels = 0

    def build(self, student, teacher, **context: object) -> None:
        """Connectors from the example shapes; margins from the teacher's example-batch statistics."""
        students, teachers = _levels(student), _levels(teacher)
        self._check_levels(students, teachers)
        self.connectors = nn.ModuleList(
            _connector(s.shape[1], t.shape[1]) for s, t in zip(students, teachers, strict=True)
        )
        margins = []
        for i, t in enumerate(teachers):
            t = t.detach().float()
            if not (t < 0).any():
                warnings.warn(
                    f"ofd: the teacher features of level {i} have no negative values; OFD expects "
                    "pre-ReLU features (tap '<relu>:in'), and after a ReLU the margin has no effect",
                    stacklevel=2,
                )
            std, mean = torch.std_mean(t, dim=(0, 2, 3), correction=0)
            margins.append(ofd_margin(mean, std))
        self.set_margins(margins)

    def set_margins(self, margins: Sequence[torch.Tensor]) -> None:
        """Replace the per-level margins (``(C_t,)`` each), e.g. with ``ofd_margin`` of the teacher's BN."""
        if self.connectors and len(margins) != len(self.connectors):
            raise DistillError(
                f"ofd: got {len(margins)} margins for {len(self.connectors)} levels; give one per level"
            )
        device = next(self.connectors.parameters()).device if self.connectors else None
        for i, margin in enumerate(margins):
            value = torch.as_tensor(margin).detach().float().clone().to(device)
            self.register_buffer(f"margin_{i}", value)
        self.num_levels = len(margins)

    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin_{i}") for i in range(self.num_levels)]

    def _check_levels(self, students: list, teachers: list) -> None:
        if len(students) != len(teachers):
            raise DistillError(
                f"ofd: got {len(students)} student taps but {len(teachers)} teacher taps; "
                "give one teacher tap per student tap"
            )

    def forward(self, student, teacher) -> torch.Tensor:
        students, teachers = _levels(student), _levels(teacher)
        self._check_levels(students, teachers)
        if len(self.connectors) != len(students) or self.num_levels != len(students):
            raise DistillError(
                f"ofd: built for {len(self.connectors)} levels, called with {len(students)}; "
                "call build(student, teacher) with example tensors first (Distiller.setup does)"
            )
        n = len(students)
        total = students[0].new_zeros((), dtype=torch.float32)
        for i, (s, t, connector, margin) in enumerate(
            zip(students, teachers, self.connectors, self.margins(), strict=True)
        ):
            s = connector(s)
            t = t.detach()
            if t.shape[2:] != s.shape[2:]:
                t = F.adaptive_avg_pool2d(t, s.shape[2:])
            total = total + ofd_loss(s, t, margin) / 2 ** (n - 1 - i)
        return total
