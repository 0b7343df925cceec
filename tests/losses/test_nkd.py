"""NKD (Yang et al. 2023) against a transcription of the authors' ``NKDLoss``
(github.com/yzd-v/cls_KD, ``mmcls/models/dis_losses/nkd.py``, the revision that removes the target class
from the non-target softmax), plus the normalization property that gives the method its name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.losses import build_loss
from distill.losses.nkd import NKDLoss, nkd_loss


# ----------------------------------------------------------------------------- reference (official)
def reference_nkd(logit_s, logit_t, gt_label, temp=1.0, gamma=1.5):
    if len(gt_label.size()) > 1:
        label = torch.max(gt_label, dim=1, keepdim=True)[1]
    else:
        label = gt_label.view(len(gt_label), 1)
    n, _ = logit_s.shape
    s_i = F.log_softmax(logit_s, dim=1)
    t_i = F.softmax(logit_t, dim=1)
    s_t = torch.gather(s_i, 1, label)
    t_t = torch.gather(t_i, 1, label).detach()
    loss_t = -(t_t * s_t).mean()
    mask = torch.ones_like(logit_s).scatter_(1, label, 0).bool()
    logit_s = logit_s[mask].reshape(n, -1)
    logit_t = logit_t[mask].reshape(n, -1)
    S_i = F.log_softmax(logit_s / temp, dim=1)
    T_i = F.softmax(logit_t / temp, dim=1)
    loss_non = (T_i * S_i).sum(dim=1).mean()
    loss_non = -gamma * (temp**2) * loss_non
    return loss_t + loss_non


def _inputs(seed=0, batch=16, classes=10):
    g = torch.Generator().manual_seed(seed)
    s = 2 * torch.randn(batch, classes, generator=g)
    t = 3 * torch.randn(batch, classes, generator=g)
    return s, t, torch.randint(0, classes, (batch,), generator=g)


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("temperature, gamma", [(1.0, 1.5), (3.0, 3.5), (2.0, 0.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_official(temperature, gamma, seed):
    s, t, y = _inputs(seed)
    got = NKDLoss(temperature, gamma)(s, t, y)
    torch.testing.assert_close(
        got, reference_nkd(s, t, y, temperature, gamma), rtol=1e-5, atol=1e-6
    )


def test_one_hot_labels_equal_class_ids():
    s, t, y = _inputs(seed=2)
    one_hot = F.one_hot(y, 10).float()
    torch.testing.assert_close(nkd_loss(s, t, one_hot), nkd_loss(s, t, y))
    torch.testing.assert_close(nkd_loss(s, t, one_hot), reference_nkd(s, t, one_hot))


def test_defaults_are_the_official_ones():
    loss = build_loss("nkd")
    assert (loss.temperature, loss.gamma) == (1.0, 1.5)
    assert NKDLoss.extra_inputs == ("labels",)


# ----------------------------------------------------------------------------- the paper's math
def _non_target_part(s, t, y, temperature):
    return nkd_loss(s, t, y, temperature, gamma=1.0) - nkd_loss(s, t, y, temperature, gamma=0.0)


def test_target_part_is_teacher_weighted_log_likelihood():
    s, t, y = _inputs(seed=3)
    rows = torch.arange(len(y))
    expected = -(t.softmax(1)[rows, y] * s.log_softmax(1)[rows, y]).mean()
    torch.testing.assert_close(nkd_loss(s, t, y, gamma=0.0), expected)


def test_non_target_part_is_normalized():
    """The non-target distributions are renormalized: raising the student's (or teacher's) target logit,
    which shrinks the non-target mass in plain KD, leaves the non-target part unchanged."""
    s, t, y = _inputs(seed=4)
    base = _non_target_part(s, t, y, 2.0)
    s2, t2 = s.clone(), t.clone()
    rows = torch.arange(len(y))
    s2[rows, y] += 6.0
    t2[rows, y] += 3.0
    torch.testing.assert_close(_non_target_part(s2, t2, y, 2.0), base, rtol=1e-5, atol=1e-6)


def test_non_target_part_is_a_cross_entropy_minimized_by_the_teacher():
    """For fixed teacher non-target logits, the student's non-target term is smallest when it copies
    them (Gibbs' inequality), up to a shift."""
    s, t, y = _inputs(seed=5)
    copied = _non_target_part(t + 1.5, t, y, 1.0)
    assert copied.item() < _non_target_part(s, t, y, 1.0).item()


def test_bad_options():
    with pytest.raises(ValueError, match="temperature"):
        NKDLoss(temperature=-1)
    with pytest.raises(ValueError, match="gamma"):
        NKDLoss(gamma=-0.1)
