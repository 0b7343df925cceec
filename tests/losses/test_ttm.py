"""TTM (Zheng & Yang 2024) against a transcription of the authors' ``TTM``
(github.com/zkxufo/TTM, ``distiller_zoo/ttm.py``), plus the paper's decomposition of TTM into KD and a
Rényi-entropy regularizer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.losses import build_loss, kd_loss
from distill.losses.ttm import TTMLoss, ttm_loss


# ----------------------------------------------------------------------------- reference (official)
def reference_ttm(y_s, y_t, exponent):
    p_s = F.log_softmax(y_s, dim=1)
    p_t = torch.pow(torch.softmax(y_t, dim=1), exponent)
    norm = torch.sum(p_t, dim=1)
    p_t = p_t / norm.unsqueeze(1)
    kl = torch.sum(F.kl_div(p_s, p_t, reduction="none"), dim=1)
    return torch.mean(kl)


def _inputs(seed=0, batch=16, classes=10):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(batch, classes, generator=g), 3 * torch.randn(
        batch, classes, generator=g
    )


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 10.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_official(temperature, seed):
    s, t = _inputs(seed)
    got = TTMLoss(temperature)(s, t)
    torch.testing.assert_close(got, reference_ttm(s, t, 1 / temperature), rtol=1e-5, atol=1e-6)


def test_default_temperature():
    assert build_loss("ttm").temperature == 4.0


# ----------------------------------------------------------------------------- the paper's math
def _renyi_entropy(logits, order):
    """H_a(p) = log(sum p^a) / (1 - a), per sample."""
    log_p = logits.log_softmax(dim=1)
    return torch.logsumexp(order * log_p, dim=1) / (1 - order)


def _entropy(logits):
    log_p = logits.log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


@pytest.mark.parametrize("temperature", [2.0, 4.0])
def test_ttm_is_kd_over_T_plus_renyi_regularizer(temperature):
    """Section 3: TTM = KD_T / T + (T - 1) * (H(p_t^gamma) - H_gamma(p_s)), gamma = 1/T. Minimizing TTM
    rewards a student with a high Rényi entropy: the extra regularization KD lacks."""
    s, t = _inputs(seed=2)
    gamma = 1 / temperature
    teacher_entropy = _entropy(t / temperature).mean()
    student_renyi = _renyi_entropy(s, gamma).mean()
    expected = kd_loss(s, t, temperature) / temperature + (temperature - 1) * (
        teacher_entropy - student_renyi
    )
    torch.testing.assert_close(ttm_loss(s, t, temperature), expected, rtol=1e-4, atol=1e-5)


def test_minimized_by_the_transformed_teacher_not_the_teacher():
    """The target is softmax(z_t / T): student logits z_t / T give 0, student logits z_t do not."""
    _, t = _inputs(seed=3)
    assert ttm_loss(t / 4.0, t, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert ttm_loss(t.clone(), t, 4.0).item() > 1e-2


def test_temperature_one_is_plain_kl():
    s, t = _inputs(seed=4)
    torch.testing.assert_close(ttm_loss(s, t, 1.0), kd_loss(s, t, 1.0))


def test_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        TTMLoss(temperature=0)
