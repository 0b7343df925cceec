"""Ahn et al., "Variational Information Distillation for Knowledge Transfer", CVPR 2019.

VID maximises a variational lower bound on the mutual information between teacher and student
features. The teacher feature ``t`` is modelled, given the student feature ``s``, as a Gaussian per
channel with a mean predicted from the student and a learned, input-independent variance (the paper's
heteroscedastic model for intermediate layers):

    mu = r(s)                                   r: conv1x1-ReLU-conv1x1-ReLU-conv1x1, C_s -> C_t
    sigma_c^2 = softplus(alpha_c) + eps         one variance per teacher channel
    L = mean_{b,c,h,w} 0.5 * ( (t - mu)^2 / sigma_c^2 + log sigma_c^2 )

which is the Gaussian negative log-likelihood of the teacher feature without its constant
``0.5 * log(2 pi)``. It can be negative. For several taps (lists) the per-level losses are summed.

Matches RepDistiller ``distiller_zoo/VID.py`` (``VIDLoss``, from the authors' code) and mdistiller
``distillers/VID.py``: the regressor's middle width is the teacher's channel count (RepDistiller's
``VIDLoss(s, t, t)``), the variance starts at ``init_pred_var = 5`` and ``eps = 1e-5``; when the
spatial sizes differ, the larger map is average-pooled to the smaller one. Regressors and variances are
created by ``build()`` from the example shapes and train with the student; they are never exported.

Practical notes: tap the stage outputs (RepDistiller uses every stage but the stem and the pooled
vector) as lists, e.g. ``student: [features.1, features.2, features.3]`` with the same teacher stages;
no projector is needed (the regressor is one). Recommended weight 1 next to the cross-entropy, without
a KD term (RepDistiller and mdistiller).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses._common import match_spatial, positive
from distill.losses.base import DistillLoss


def vid_nll(
    predicted_mean: torch.Tensor, teacher_features: torch.Tensor, variance: torch.Tensor
) -> torch.Tensor:
    """Mean Gaussian NLL (without the constant) of the teacher ``(B, C, H, W)`` given the predicted mean
    ``(B, C, H, W)`` and one variance per channel ``(C,)``."""
    var = variance.float().view(1, -1, 1, 1)
    diff = predicted_mean.float() - teacher_features.detach().float()
    return (0.5 * (diff.pow(2) / var + var.log())).mean()


def _as_maps(x: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` vectors become ``(B, D, 1, 1)`` maps; maps pass through."""
    if x.ndim == 2:
        return x[:, :, None, None]
    if x.ndim != 4:
        raise ValueError(
            f"vid: needs maps (B, C, H, W) or vectors (B, D), got shape {tuple(x.shape)}"
        )
    return x


def _levels(x: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [_as_maps(a) for a in (x if isinstance(x, (list, tuple)) else [x])]


def _conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)


@LOSSES.register(
    "vid",
    paper="Ahn et al., Variational Information Distillation for Knowledge Transfer",
    year=2019,
    kind="feature",
    consumes="features (one or more stages)",
    inputs="maps_list",
    identity=None,
    taps="stage outputs as lists (e.g. features.1-3 on both sides); no projector",
    weight="1 (RepDistiller / mdistiller), without a KD term",
)
class VIDLoss(DistillLoss):
    """Variational information distillation on one map or a list of maps (one regressor per level)."""

    needs_same_shape = False  # the regressor maps C_s to C_t

    def __init__(
        self, init_pred_var: float = 5.0, eps: float = 1e-5, mid_channels: int | None = None
    ) -> None:
        super().__init__()
        positive("vid", "eps", eps, "the paper's code uses 1e-5")
        if not init_pred_var > eps:
            raise ValueError(
                f"vid: init_pred_var must be > eps ({eps}), got {init_pred_var}; the paper's code uses 5.0"
            )
        if mid_channels is not None and (
            isinstance(mid_channels, bool) or not isinstance(mid_channels, int) or mid_channels < 1
        ):
            raise ValueError(
                f"vid: mid_channels must be an int >= 1 or None (= the teacher's channels), got {mid_channels!r}"
            )
        self.init_pred_var = float(init_pred_var)
        self.eps = float(eps)
        self.mid_channels = mid_channels
        self.regressors = nn.ModuleList()
        self.log_scales = nn.ParameterList()

    def build(self, student, teacher, **context: object) -> None:
        """One regressor and one variance vector per level, sized from example tensors."""
        students, teachers = _levels(student), _levels(teacher)
        self._check_levels(students, teachers)
        self.regressors = nn.ModuleList()
        self.log_scales = nn.ParameterList()
        init = math.log(math.expm1(self.init_pred_var - self.eps))  # softplus^-1
        for s, t in zip(students, teachers, strict=True):
            c_s, c_t = s.shape[1], t.shape[1]
            mid = self.mid_channels or c_t
            self.regressors.append(
                nn.Sequential(
                    _conv1x1(c_s, mid), nn.ReLU(), _conv1x1(mid, mid), nn.ReLU(), _conv1x1(mid, c_t)
                )
            )
            self.log_scales.append(nn.Parameter(torch.full((c_t,), init)))

    def _check_levels(self, students: list, teachers: list) -> None:
        if len(students) != len(teachers):
            raise DistillError(
                f"vid: got {len(students)} student taps but {len(teachers)} teacher taps; "
                "give one teacher tap per student tap"
            )

    def variances(self) -> list[torch.Tensor]:
        """The current per-channel variances ``softplus(alpha) + eps``, one ``(C_t,)`` per level."""
        return [F.softplus(a.float()) + self.eps for a in self.log_scales]

    def forward(self, student, teacher) -> torch.Tensor:
        students, teachers = _levels(student), _levels(teacher)
        self._check_levels(students, teachers)
        if len(self.regressors) != len(students):
            raise DistillError(
                f"vid: built for {len(self.regressors)} levels, called with {len(students)}; "
                "call build(student, teacher) with example tensors first (Distiller.setup does)"
            )
        total = students[0].new_zeros((), dtype=torch.float32)
        for s, t, regressor, variance in zip(
            students, teachers, self.regressors, self.variances(), strict=True
        ):
            s, t = match_spatial(s, t.detach())
            total = total + vid_nll(regressor(s), t, variance)
        return total

    def extra_repr(self) -> str:
        return (
            f"init_pred_var={self.init_pred_var}, eps={self.eps}, mid_channels={self.mid_channels}"
        )
