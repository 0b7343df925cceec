"""Logit standardization (Sun et al. 2024) as an option of ``kd``, ``dkd``, ``dist`` and ``mlkd``, against
a transcription of the authors' ``normalize`` and ``kd_loss``
(github.com/sunshangquan/logit-standardization-KD, ``mdistiller/distillers/KD.py``), plus the invariance
the pre-process exists for: a student only has to match the teacher's logits up to a per-sample shift
and positive scale."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.losses import KDLoss, build_loss, kd_loss
from distill.losses._standardize import standardize
from distill.losses.dist import dist_loss
from distill.losses.dkd import dkd_loss
from distill.losses.mlkd import mlkd_loss


# ----------------------------------------------------------------------------- reference (official)
def reference_normalize(logit):
    mean = logit.mean(dim=-1, keepdims=True)
    stdv = logit.std(dim=-1, keepdims=True)
    return (logit - mean) / (1e-7 + stdv)


def reference_kd(logits_student_in, logits_teacher_in, temperature, logit_stand):
    logits_student = reference_normalize(logits_student_in) if logit_stand else logits_student_in
    logits_teacher = reference_normalize(logits_teacher_in) if logit_stand else logits_teacher_in
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
    return loss_kd * temperature**2


def _inputs(seed=0, batch=16, classes=10):
    g = torch.Generator().manual_seed(seed)
    s = 2 * torch.randn(batch, classes, generator=g)
    t = 5 * torch.randn(batch, classes, generator=g) + 1
    return s, t, torch.randint(0, classes, (batch,), generator=g)


def _affine(x, seed):
    """A different positive scale and shift for every sample."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(x.shape[0], 1, generator=g) * 5 + 0.2
    shift = torch.randn(x.shape[0], 1, generator=g) * 10
    return x * scale + shift


# ----------------------------------------------------------------------------- the helper
def test_helper_matches_official_normalize():
    s, _, _ = _inputs()
    torch.testing.assert_close(standardize(s), reference_normalize(s))
    z = standardize(s)
    torch.testing.assert_close(z.mean(-1), torch.zeros(16), atol=1e-6, rtol=0)
    torch.testing.assert_close(z.std(-1), torch.ones(16), atol=1e-5, rtol=0)


def test_helper_is_float32_and_per_vector():
    s, _, _ = _inputs()
    assert standardize(s.bfloat16()).dtype == torch.float32
    torch.testing.assert_close(standardize(s.view(4, 4, 10)), standardize(s).view(4, 4, 10))


# ----------------------------------------------------------------------------- kd
@pytest.mark.parametrize("temperature", [2.0, 4.0])
@pytest.mark.parametrize("logit_stand", [False, True])
def test_kd_matches_official(temperature, logit_stand):
    s, t, _ = _inputs(seed=1)
    got = KDLoss(temperature, standardize=logit_stand)(s, t)
    torch.testing.assert_close(got, reference_kd(s, t, temperature, logit_stand))


def test_kd_default_is_unchanged():
    s, t, _ = _inputs(seed=2)
    assert build_loss("kd").standardize is False
    torch.testing.assert_close(KDLoss(4.0)(s, t), kd_loss(s, t, 4.0))
    assert not torch.isclose(KDLoss(4.0, standardize=True)(s, t), kd_loss(s, t, 4.0))


# ----------------------------------------------------------------------------- invariance, every loss
LOSSES = {
    "kd": lambda s, t, y, z: kd_loss(s, t, 2.0, standardize=z),
    "dkd": lambda s, t, y, z: dkd_loss(s, t, y, standardize=z),
    "dist": lambda s, t, y, z: dist_loss(s, t, temperature=4.0, standardize=z),
    "mlkd-instance": lambda s, t, y, z: mlkd_loss(s, t, (2.0, 4.0), 1, 0, 0, standardize=z),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_standardized_loss_ignores_per_sample_shift_and_scale(name):
    fn = LOSSES[name]
    s, t, y = _inputs(seed=3)
    base = fn(s, t, y, True)
    torch.testing.assert_close(
        fn(_affine(s, 1), _affine(t, 2), y, True), base, rtol=1e-4, atol=1e-5
    )
    assert not torch.isclose(fn(_affine(s, 1), t, y, False), fn(s, t, y, False), rtol=1e-3)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_standardize_option_is_the_loss_of_z_scored_logits(name):
    fn = LOSSES[name]
    s, t, y = _inputs(seed=4)
    torch.testing.assert_close(
        fn(s, t, y, True), fn(standardize(s), standardize(t), y, False), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", ["kd", "dkd", "dist", "mlkd"])
def test_option_accepted_by_name(name):
    assert build_loss(name, standardize=True).standardize is True


def test_standardized_loss_is_zero_when_logits_agree_up_to_scale():
    s, _, y = _inputs(seed=5)
    assert kd_loss(3 * s + 1, s, 2.0, standardize=True).item() == pytest.approx(0.0, abs=1e-5)
    assert dkd_loss(3 * s + 1, s, y, standardize=True).item() == pytest.approx(0.0, abs=1e-5)
