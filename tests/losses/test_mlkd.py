"""MLKD (Jin et al. 2023) against a transcription of the authors' loss functions ``kd_loss``,
``bc_loss`` and ``cc_loss`` (github.com/Jin-Ying/Multi-Level-Logit-Distillation,
``mdistiller/distillers/KD_ours.py``) summed over their temperatures {4, 3, 5, 2, 6} on one view, plus the
levels' invariances."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.losses import build_loss
from distill.losses.mlkd import MLKDLoss, mlkd_loss

OFFICIAL_TEMPERATURES = (4.0, 3.0, 5.0, 2.0, 6.0)


# ----------------------------------------------------------------------------- reference (official)
def ref_kd(logits_student, logits_teacher, temperature):
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
    return loss_kd * temperature**2


def ref_cc(logits_student, logits_teacher, temperature):
    _, class_num = logits_teacher.shape
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    student_matrix = torch.mm(pred_student.transpose(1, 0), pred_student)
    teacher_matrix = torch.mm(pred_teacher.transpose(1, 0), pred_teacher)
    return ((teacher_matrix - student_matrix) ** 2).sum() / class_num


def ref_bc(logits_student, logits_teacher, temperature):
    batch_size, _ = logits_teacher.shape
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    student_matrix = torch.mm(pred_student, pred_student.transpose(1, 0))
    teacher_matrix = torch.mm(pred_teacher, pred_teacher.transpose(1, 0))
    return ((teacher_matrix - student_matrix) ** 2).sum() / batch_size


def _inputs(seed=0, batch=16, classes=10):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(batch, classes, generator=g), 3 * torch.randn(
        batch, classes, generator=g
    )


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_official_single_view(seed):
    s, t = _inputs(seed)
    expected = sum(
        ref_kd(s, t, T) + ref_bc(s, t, T) + ref_cc(s, t, T) for T in OFFICIAL_TEMPERATURES
    )
    torch.testing.assert_close(MLKDLoss()(s, t), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "weights, ref", [((1, 0, 0), ref_kd), ((0, 1, 0), ref_bc), ((0, 0, 1), ref_cc)]
)
def test_each_level_matches_official(weights, ref):
    s, t = _inputs(seed=2)
    expected = sum(ref(s, t, T) for T in (2.0, 6.0))
    got = mlkd_loss(s, t, (2.0, 6.0), *weights)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_defaults_are_the_official_ones():
    loss = build_loss("mlkd")
    assert sorted(loss.temperatures) == sorted(OFFICIAL_TEMPERATURES)
    assert (loss.instance_weight, loss.batch_weight, loss.class_weight) == (1.0, 1.0, 1.0)


def test_temperatures_from_a_yaml_list():
    assert build_loss("mlkd", temperatures=[1, 2]).temperatures == (1.0, 2.0)


# ----------------------------------------------------------------------------- the levels
def test_joint_batch_permutation_leaves_every_level_unchanged():
    s, t = _inputs(seed=3)
    perm = torch.randperm(s.shape[0])
    torch.testing.assert_close(mlkd_loss(s[perm], t[perm]), mlkd_loss(s, t))


def test_repeating_the_batch_scales_batch_and_class_levels_only():
    """Instance level: a mean (unchanged). Batch level: ||Gram||^2 / B doubles. Class level: the (C, C)
    matrix sums over samples, so its squared error quadruples. This is why mlkd is not batch invariant."""
    s, t = _inputs(seed=4)
    s2, t2 = torch.cat([s, s]), torch.cat([t, t])
    for weights, factor in (((1, 0, 0), 1.0), ((0, 1, 0), 2.0), ((0, 0, 1), 4.0)):
        one = mlkd_loss(s, t, (4.0,), *weights)
        torch.testing.assert_close(mlkd_loss(s2, t2, (4.0,), *weights), factor * one)


def test_float32_under_bf16_autocast():
    s, t = _inputs(seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = mlkd_loss(s, t)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, mlkd_loss(s, t))


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"temperatures": []}, "temperatures"),
        ({"temperatures": [2, 0]}, "temperatures"),
        ({"batch_weight": -1}, "batch"),
    ],
)
def test_bad_options(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        MLKDLoss(**kwargs)
