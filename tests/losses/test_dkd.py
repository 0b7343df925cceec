"""DKD (Zhao et al. 2022) against a transcription of mdistiller's ``mdistiller/distillers/DKD.py``
(github.com/megvii-research/mdistiller), plus the paper's decomposition of KD into TCKD and NCKD."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.losses import build_loss, kd_loss
from distill.losses.dkd import DKDLoss, dkd_loss


# ----------------------------------------------------------------------------- reference (mdistiller)
def _gt_mask(logits, target):
    return torch.zeros_like(logits).scatter_(1, target.reshape(-1).unsqueeze(1), 1).bool()


def _other_mask(logits, target):
    return torch.ones_like(logits).scatter_(1, target.reshape(-1).unsqueeze(1), 0).bool()


def _cat_mask(t, mask1, mask2):
    return torch.cat([(t * mask1).sum(1, keepdim=True), (t * mask2).sum(1, keepdim=True)], dim=1)


def reference_dkd(logits_student, logits_teacher, target, alpha, beta, temperature):
    gt_mask = _gt_mask(logits_student, target)
    other_mask = _other_mask(logits_student, target)
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = _cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = _cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd = (
        F.kl_div(log_pred_student, pred_teacher, reduction="sum") * temperature**2 / target.shape[0]
    )
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd = (
        F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum")
        * temperature**2
        / target.shape[0]
    )
    return alpha * tckd + beta * nckd


def _inputs(seed=0, batch=16, classes=10, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = scale * torch.randn(batch, classes, generator=g)
    t = scale * torch.randn(batch, classes, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    return s, t, y


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize(
    "alpha, beta, temperature", [(1.0, 8.0, 4.0), (1.0, 0.5, 1.0), (2.0, 3.0, 2.0)]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_mdistiller(alpha, beta, temperature, seed):
    s, t, y = _inputs(seed)
    expected = reference_dkd(s, t, y, alpha, beta, temperature)
    got = DKDLoss(alpha, beta, temperature)(s, t, y)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_defaults_are_the_papers_cifar_setting():
    loss = build_loss("dkd")
    assert (loss.alpha, loss.beta, loss.temperature, loss.standardize) == (1.0, 8.0, 4.0, False)
    assert DKDLoss.extra_inputs == ("labels",)


# ----------------------------------------------------------------------------- the paper's math
def _tckd_nckd(s, t, y, temperature):
    return (
        dkd_loss(s, t, y, alpha=1.0, beta=0.0, temperature=temperature),
        dkd_loss(s, t, y, alpha=0.0, beta=1.0, temperature=temperature),
    )


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_is_tckd_plus_teacher_weighted_nckd(temperature):
    """Eq. (5): KD = TCKD + (1 - p_t(y)) * NCKD, sample by sample."""
    s, t, y = _inputs(seed=3, batch=6)
    for i in range(len(y)):
        si, ti, yi = s[i : i + 1], t[i : i + 1], y[i : i + 1]
        tckd, nckd = _tckd_nckd(si, ti, yi, temperature)
        p_target = F.softmax(ti / temperature, dim=1)[0, yi].squeeze()
        kd = kd_loss(si, ti, temperature)
        torch.testing.assert_close(tckd + (1 - p_target) * nckd, kd, rtol=1e-5, atol=1e-6)


def test_nckd_ignores_the_target_logits():
    """NCKD compares the non-target distributions only: moving the target logits changes TCKD alone."""
    s, t, y = _inputs(seed=4)
    tckd, nckd = _tckd_nckd(s, t, y, 4.0)
    s2, t2 = s.clone(), t.clone()
    rows = torch.arange(len(y))
    s2[rows, y] += 5.0
    t2[rows, y] -= 2.0
    tckd2, nckd2 = _tckd_nckd(s2, t2, y, 4.0)
    torch.testing.assert_close(nckd2, nckd, rtol=1e-5, atol=1e-6)
    assert not torch.isclose(tckd2, tckd)


def test_finite_for_confident_student_where_the_reference_overflows():
    """A student sure of the target class: mdistiller's log(1 - p) is log(0); here it stays finite."""
    s, t, y = _inputs(seed=5, batch=4)
    s[torch.arange(4), y] = 500.0
    s.requires_grad_(True)
    assert not torch.isfinite(reference_dkd(s.detach(), t, y, 1.0, 8.0, 1.0))
    value = dkd_loss(s, t, y, temperature=1.0)
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(s.grad).all()


def test_sequence_logits_and_labels_are_flattened():
    s, t, y = _inputs(seed=6, batch=12)
    flat = dkd_loss(s, t, y)
    torch.testing.assert_close(dkd_loss(s.view(3, 4, 10), t.view(3, 4, 10), y.view(3, 4)), flat)


@pytest.mark.parametrize(
    "kwargs, needle",
    [({"temperature": 0}, "temperature"), ({"alpha": -1}, "alpha"), ({"beta": -0.5}, "beta")],
)
def test_bad_options(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        DKDLoss(**kwargs)
