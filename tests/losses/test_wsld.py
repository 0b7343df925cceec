"""WSLD (Zhou et al. 2021). The reference transcribes ``WSLDistiller.forward`` of the authors' code
(bellymonster/Weighted-Soft-Label-Distillation, knowledge_distiller.py; mmrazor's ``WSLD`` loss is the
same), minus ``.cuda()`` and the hard-label term, with the class count taken from the logits instead of
the hard-coded 1000. Properties: per sample the gradient is the weight times KD's gradient; the weight
is ``1 - exp(-CE_s / CE_t)``, near 1 where the student lags and small where it beats the teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.losses import build_loss
from distill.losses.wsld import wsld_weights


def _ref_wsld(fc_s, fc_t, label, T=2.0):
    softmax = nn.Softmax(dim=1)
    logsoftmax = nn.LogSoftmax(dim=1)
    s_input_for_softmax = fc_s / T
    t_input_for_softmax = fc_t / T
    t_soft_label = softmax(t_input_for_softmax)
    softmax_loss = -torch.sum(t_soft_label * logsoftmax(s_input_for_softmax), 1, keepdim=True)
    fc_s_auto = fc_s.detach()
    fc_t_auto = fc_t.detach()
    log_softmax_s = logsoftmax(fc_s_auto)
    log_softmax_t = logsoftmax(fc_t_auto)
    one_hot_label = F.one_hot(label, num_classes=fc_s.shape[1]).float()
    softmax_loss_s = -torch.sum(one_hot_label * log_softmax_s, 1, keepdim=True)
    softmax_loss_t = -torch.sum(one_hot_label * log_softmax_t, 1, keepdim=True)
    focal_weight = softmax_loss_s / (softmax_loss_t + 1e-7)
    ratio_lower = torch.zeros(1)
    focal_weight = torch.max(focal_weight, ratio_lower)
    focal_weight = 1 - torch.exp(-focal_weight)
    softmax_loss = focal_weight * softmax_loss
    return (T**2) * torch.mean(softmax_loss)


def _inputs(seed=0, b=32, c=10):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, c, generator=g),
        3 * torch.randn(b, c, generator=g),
        torch.randint(0, c, (b,), generator=g),
    )


@pytest.mark.parametrize("temperature", [2.0, 1.0, 4.0])
def test_parity_with_the_authors_code_values_and_gradients(temperature):
    student, teacher, labels = _inputs()
    s1, s2 = student.clone().requires_grad_(), student.clone().requires_grad_()
    ours = build_loss("wsld", temperature=temperature)(s1, teacher, labels)
    ref = _ref_wsld(s2, teacher, labels, temperature)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(s1.grad, s2.grad)


def test_gradient_is_the_weight_times_kds_per_sample():
    student, teacher, labels = _inputs(1, b=8)
    weights = wsld_weights(student, teacher, labels)
    s = student.clone().requires_grad_()
    build_loss("wsld")(s, teacher, labels).backward()
    for i in range(len(labels)):
        s_kd = student[i : i + 1].clone().requires_grad_()
        build_loss("kd", temperature=2.0)(s_kd, teacher[i : i + 1]).backward()
        torch.testing.assert_close(s.grad[i], weights[i] * s_kd.grad[0] / len(labels))


def test_weights_follow_the_student_teacher_cross_entropy_ratio():
    student, teacher, labels = _inputs(2)
    ce_s = F.cross_entropy(student, labels, reduction="none")
    ce_t = F.cross_entropy(teacher, labels, reduction="none")
    weights = wsld_weights(student, teacher, labels)
    torch.testing.assert_close(weights, 1 - torch.exp(-ce_s / (ce_t + 1e-7)))
    assert ((weights >= 0) & (weights < 1)).all()
    # a confident, correct teacher and a lost student: weight ~ 1; the reverse: weight ~ 0
    lost = torch.zeros(1, 10)
    sure = torch.zeros(1, 10)
    sure[0, 3] = 12.0
    label = torch.tensor([3])
    assert float(wsld_weights(lost, sure, label)) > 0.999
    assert float(wsld_weights(sure, lost, label)) < 1e-3


def test_weights_carry_no_gradient_and_teacher_gets_none():
    student, teacher, labels = _inputs(3)
    s, t = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    build_loss("wsld")(s, t, labels).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    # with identical logits the value is T^2 * mean(w * teacher entropy): the soft cross-entropy
    value = build_loss("wsld")(teacher, teacher, labels)
    p = F.softmax(teacher / 2, 1)
    entropy = -(p * F.log_softmax(teacher / 2, 1)).sum(1)
    torch.testing.assert_close(value, 4 * (wsld_weights(teacher, teacher, labels) * entropy).mean())


def test_bad_options():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        build_loss("wsld", temperature=0)
