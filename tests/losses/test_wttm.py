"""WTTM (Zheng & Yang 2024) against a transcription of the authors' ``WTTM``
(github.com/zkxufo/TTM, ``distiller_zoo/wttm.py``), plus the behaviour of its sample-adaptive weight."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import build_loss
from distill.losses.ttm import ttm_loss, ttm_terms
from distill.losses.wttm import WTTMLoss, wttm_loss


# ----------------------------------------------------------------------------- reference (official)
def reference_wttm(y_s, y_t, exponent):
    p_s = F.log_softmax(y_s, dim=1)
    p_t = torch.pow(torch.softmax(y_t, dim=1), exponent)
    norm = torch.sum(p_t, dim=1)
    p_t = p_t / norm.unsqueeze(1)
    kl = torch.sum(F.kl_div(p_s, p_t, reduction="none"), dim=1)
    return torch.mean(norm * kl)


def _inputs(seed=0, batch=16, classes=10):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(batch, classes, generator=g), 3 * torch.randn(
        batch, classes, generator=g
    )


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 5.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_official(temperature, seed):
    s, t = _inputs(seed)
    got = WTTMLoss(temperature)(s, t)
    torch.testing.assert_close(got, reference_wttm(s, t, 1 / temperature), rtol=1e-5, atol=1e-6)


def test_default_temperature():
    assert build_loss("wttm").temperature == 4.0


# ----------------------------------------------------------------------------- the weight
def test_weight_is_one_for_a_one_hot_teacher():
    """U(p) = sum p^gamma is 1 for a (numerically) one-hot teacher: WTTM = TTM there."""
    s, _ = _inputs(seed=2)
    t = 200.0 * F.one_hot(torch.arange(16) % 10, 10).float()
    torch.testing.assert_close(wttm_loss(s, t, 4.0), ttm_loss(s, t, 4.0))


def test_weight_is_largest_for_a_uniform_teacher():
    """A uniform teacher gets the maximal weight C^(1 - gamma)."""
    s, _ = _inputs(seed=3)
    t = torch.zeros_like(s)
    temperature, classes = 4.0, s.shape[1]
    expected = classes ** (1 - 1 / temperature) * ttm_loss(s, t, temperature)
    torch.testing.assert_close(wttm_loss(s, t, temperature), expected)


def test_wttm_at_least_ttm_and_weights_between_one_and_max():
    s, t = _inputs(seed=4)
    _, log_u = ttm_terms(s, t, 4.0)
    u = log_u.exp()
    assert (u >= 1 - 1e-6).all() and (u <= 10 ** (1 - 0.25) + 1e-5).all()
    assert wttm_loss(s, t, 4.0).item() >= ttm_loss(s, t, 4.0).item()


def test_weight_does_not_underflow_for_confident_teachers():
    """softmax(z_t) ** gamma underflows to 0 for huge margins; the log-space weight stays >= 1."""
    s, _ = _inputs(seed=5, batch=2)
    t = torch.tensor([[0.0] + [-200.0] * 9, [0.0] * 10])
    _, log_u = ttm_terms(s, t, 10.0)
    assert torch.isfinite(log_u).all() and log_u[1].item() == pytest.approx(0.9 * math.log(10))


def test_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        WTTMLoss(temperature=-2)
