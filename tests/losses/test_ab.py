"""AB (Heo et al. 2019) against the authors' code (bhheo/AB_distillation ``cifar10_AB_distillation.py``:
``criterion_alternative_L2`` and its level weights 1, 1/2, 1/4 over the batch, times 3/1000; RepDistiller's
``ABLoss`` is the same), transcribed below, plus the properties of an activation-boundary loss: it reads
only the sign of the teacher, and it is zero once every student neuron is beyond the margin on the
teacher's side."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.losses import build_loss


# ---- reference: bhheo/AB_distillation cifar10_AB_distillation.py, verbatim up to names
def _ref_criterion_alternative_l2(source, target, margin):
    loss = (source + margin) ** 2 * ((source > -margin) & (target <= 0)).float() + (
        source - margin
    ) ** 2 * ((source <= margin) & (target > 0)).float()
    return torch.abs(loss).sum()


def _ref_ab(res_s, res_t, margin=1.0):  # res = [res1, res2, res3], shallow to deep
    batch_size = res_s[0].shape[0]
    loss_alter = _ref_criterion_alternative_l2(res_s[2], res_t[2], margin) / batch_size
    loss_alter += _ref_criterion_alternative_l2(res_s[1], res_t[1], margin) / batch_size / 2
    loss_alter += _ref_criterion_alternative_l2(res_s[0], res_t[0], margin) / batch_size / 4
    return loss_alter / 1000 * 3


def _maps(seed=0, student_channels=(4, 8, 16)):
    g = torch.Generator().manual_seed(seed)
    sizes = (8, 4, 2)
    student = [
        torch.randn(6, c, h, h, generator=g) for c, h in zip(student_channels, sizes, strict=True)
    ]
    teacher = [torch.randn(6, c, h, h, generator=g) for c, h in zip((4, 8, 16), sizes, strict=True)]
    return student, teacher


@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_parity_with_the_authors_code(margin):
    student, teacher = _maps()
    loss = build_loss("ab", margin=margin)
    loss.build(student, teacher)
    assert all(isinstance(c, nn.Identity) for c in loss.connectors)  # equal widths: no connector
    torch.testing.assert_close(loss(student, teacher), _ref_ab(student, teacher, margin))


def test_connectors_are_1x1_conv_bn_where_widths_differ_and_train():
    student, teacher = _maps(1, student_channels=(2, 8, 4))
    torch.manual_seed(0)
    loss = build_loss("ab")
    with pytest.raises(RuntimeError, match="build"):
        loss(student, teacher)
    loss.build(student, teacher)
    kinds = [type(c[0]) if isinstance(c, nn.Sequential) else type(c) for c in loss.connectors]
    assert kinds == [nn.Conv2d, nn.Identity, nn.Conv2d]
    conv, bn = loss.connectors[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (
        2,
        4,
        (1, 1),
        None,
    )
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():
        connected = [c(s) for c, s in zip(loss.connectors, student, strict=True)]
    value = loss(student, teacher)
    torch.testing.assert_close(value, _ref_ab(connected, teacher))
    value.backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_reads_only_the_sign_of_the_teacher_and_vanishes_beyond_the_margin():
    student, teacher = _maps(2)
    loss = build_loss("ab")
    loss.build(student, teacher)
    base = loss(student, teacher)
    torch.testing.assert_close(loss(student, [5 * t.relu() for t in teacher]), base)
    beyond = [torch.where(t > 0, 1.5, -1.5) for t in teacher]  # every neuron on the right side
    assert float(loss(beyond, teacher)) == 0.0
    assert float(loss([-b for b in beyond], teacher)) > 0


def test_spatial_mismatch_is_a_one_line_error():
    student, teacher = _maps(3)
    student[1] = torch.randn(6, 8, 3, 3)
    with pytest.raises(ValueError, match="level 1") as excinfo:
        build_loss("ab").build(student, teacher)
    assert "\n" not in str(excinfo.value)


def test_teacher_gets_no_gradient():
    student, teacher = _maps(4)
    s = [x.requires_grad_() for x in student]
    t = [x.requires_grad_() for x in teacher]
    loss = build_loss("ab")
    loss.build(s, t)
    loss(s, t).backward()
    assert all(x.grad is not None for x in s) and all(x.grad is None for x in t)


def test_bad_option():
    with pytest.raises(ValueError, match="margin must be > 0, got 0"):
        build_loss("ab", margin=0)
