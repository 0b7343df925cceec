"""VID (Ahn et al., CVPR 2019) against the official code and its defining properties.

The reference transcribes ``VIDLoss`` from HobbitLong/RepDistiller ``distiller_zoo/VID.py`` (itself
from the authors' code, ssahn0215/variational-information-distillation) and RepDistiller's
``train_student.py`` wiring: ``VIDLoss(s, t, t)`` per level, per-level losses summed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.losses import build_loss


class ReferenceVID(nn.Module):
    """RepDistiller's VIDLoss."""

    def __init__(
        self, num_input_channels, num_mid_channel, num_target_channels, init_pred_var=5.0, eps=1e-5
    ):
        super().__init__()

        def conv1x1(in_channels, out_channels):
            return nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0, bias=False)

        self.regressor = nn.Sequential(
            conv1x1(num_input_channels, num_mid_channel),
            nn.ReLU(),
            conv1x1(num_mid_channel, num_mid_channel),
            nn.ReLU(),
            conv1x1(num_mid_channel, num_target_channels),
        )
        self.log_scale = torch.nn.Parameter(
            np.log(np.exp(init_pred_var - eps) - 1.0) * torch.ones(num_target_channels)
        )
        self.eps = eps

    def forward(self, input, target):
        s_H, t_H = input.shape[2], target.shape[2]
        if s_H > t_H:
            input = F.adaptive_avg_pool2d(input, (t_H, t_H))
        elif s_H < t_H:
            target = F.adaptive_avg_pool2d(target, (s_H, s_H))
        pred_mean = self.regressor(input)
        pred_var = torch.log(1.0 + torch.exp(self.log_scale)) + self.eps
        pred_var = pred_var.view(1, -1, 1, 1)
        neg_log_prob = 0.5 * ((pred_mean - target) ** 2 / pred_var + torch.log(pred_var))
        return torch.mean(neg_log_prob)


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    students = [torch.randn(4, 6, 8, 8, generator=g), torch.randn(4, 8, 4, 4, generator=g)]
    teachers = [torch.randn(4, 12, 8, 8, generator=g), torch.randn(4, 16, 2, 2, generator=g)]
    return students, teachers


def _built(students, teachers, **options):
    torch.manual_seed(0)
    loss = build_loss("vid", **options)
    loss.build(students, teachers)
    return loss


def _references(loss, students, teachers):
    refs = []
    for s, t, regressor, log_scale in zip(
        students, teachers, loss.regressors, loss.log_scales, strict=True
    ):
        ref = ReferenceVID(s.shape[1], t.shape[1], t.shape[1]).double()
        ref.regressor.load_state_dict(regressor.state_dict())
        ref.log_scale.data.copy_(log_scale.detach().double())
        refs.append(ref)
    return refs


def test_matches_repdistiller_on_several_levels():
    students, teachers = _pair()
    loss = _built(students, teachers)
    with torch.no_grad():  # train the variances away from their start so they matter
        for a in loss.log_scales:
            a.add_(torch.linspace(-2, 1, a.numel()))
    refs = _references(loss, students, teachers)
    expected = sum(
        ref(s.double(), t.double()) for ref, s, t in zip(refs, students, teachers, strict=True)
    )
    torch.testing.assert_close(loss(students, teachers).double(), expected, rtol=1e-5, atol=1e-6)


def test_single_tap_and_defaults():
    students, teachers = _pair(1)
    loss = _built(students[0], teachers[0])
    assert (loss.init_pred_var, loss.eps) == (5.0, 1e-5)
    assert (
        loss.regressors[0][0].out_channels == 12
    )  # middle width = teacher channels (RepDistiller)
    torch.testing.assert_close(loss.variances()[0], torch.full((12,), 5.0))
    start = ReferenceVID(6, 12, 12).log_scale  # the official initial variance parameter
    torch.testing.assert_close(loss.log_scales[0].detach(), start.detach().float())
    (ref,) = _references(loss, students[:1], teachers[:1])
    torch.testing.assert_close(
        loss(students[0], teachers[0]).double(),
        ref(students[0].double(), teachers[0].double()),
        rtol=1e-5,
        atol=1e-6,
    )


def test_is_the_gaussian_negative_log_likelihood():
    """VID = - mean log N(t; r(s), sigma_c^2) - 0.5 log(2 pi)."""
    students, teachers = _pair(2)
    loss = _built(students[0], teachers[0])
    s, t = students[0], teachers[0]
    mean = loss.regressors[0](s)
    std = loss.variances()[0].sqrt().view(1, -1, 1, 1).expand_as(mean)
    nll = -torch.distributions.Normal(mean, std).log_prob(t).mean() - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(loss(s, t), nll)


def test_learned_variance_is_optimal_at_the_per_channel_error():
    """d L / d sigma_c^2 = 0 exactly when sigma_c^2 equals the channel's mean squared error."""
    students, teachers = _pair(3)
    loss = _built(students[0], teachers[0])
    s, t = students[0], teachers[0]
    with torch.no_grad():
        mse = (loss.regressors[0](s) - t).pow(2).mean(dim=(0, 2, 3))
        loss.log_scales[0].copy_(torch.log(torch.expm1(mse - loss.eps)))  # softplus^-1
    loss(s, t).backward()
    assert loss.log_scales[0].grad.abs().max() < 1e-6
    with torch.no_grad():
        loss.log_scales[0].add_(0.5)  # any other variance is worse
    loss.zero_grad()
    assert loss(s, t).item() > 0 and loss.log_scales[0].grad is None


def test_vectors_are_treated_as_1x1_maps():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(5, 6, generator=g), torch.randn(5, 9, generator=g)
    loss = _built(s, t)
    torch.testing.assert_close(loss(s, t), loss(s[:, :, None, None], t[:, :, None, None]))


def test_errors():
    students, teachers = _pair()
    with pytest.raises(DistillError, match="build"):
        build_loss("vid")(students, teachers)
    loss = _built(students, teachers)
    with pytest.raises(DistillError, match="teacher taps"):
        loss(students, teachers[:1])
    for bad in ({"eps": 0}, {"init_pred_var": 0}, {"mid_channels": 0}):
        with pytest.raises(ValueError, match="vid: "):
            build_loss("vid", **bad)
