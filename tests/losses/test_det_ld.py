"""LD (Zheng et al., CVPR 2022) against the authors' code and its defining properties.

The reference transcribes HikariTJU/LD: ``mmdet/models/losses/kd_loss.py``
(``knowledge_distillation_kl_div_loss``: KL of ``softmax(target / T)`` and ``log_softmax(pred / T)``,
``.mean(1)`` over the bins, times ``T * T``) and ``LDHead.loss_single`` (rows of ``reg_max`` bins per
anchor and side, weights repeated per side, mmdet's weighted reduction with ``avg_factor=4.0``). The
official loss sums over the assigner's positives; ours is the mean over anchor points weighted the same
way, i.e. the official value divided by the sum of the weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.distiller import Distiller, Term
from distill.errors import DistillError
from distill.losses import build_loss
from distill.losses.ld import ld_loss
from distill.tasks.base import Batch, Task

REG_MAX, ANCHORS = 16, 21


def knowledge_distillation_kl_div_loss(pred, soft_label, T, detach_target=True):
    target = F.softmax(soft_label / T, dim=1)
    if detach_target:
        target = target.detach()
    return F.kl_div(F.log_softmax(pred / T, dim=1), target, reduction="none").mean(1) * (T * T)


def reference_ld(student_boxes, teacher_boxes, weight_targets, T=10, loss_weight=1.0):
    """LDHead's loss_ld with every anchor point a positive weighted by ``weight_targets`` (B, A)."""
    b, _, a = student_boxes.shape
    # Ultralytics' DFL layout: (B, 4 * reg_max, A) -> (B, 4, reg_max, A); rows = (anchor, side)
    pred_corners = student_boxes.view(b, 4, REG_MAX, a).permute(0, 3, 1, 2).reshape(-1, REG_MAX)
    soft_corners = teacher_boxes.view(b, 4, REG_MAX, a).permute(0, 3, 1, 2).reshape(-1, REG_MAX)
    weight = weight_targets.reshape(-1)[:, None].expand(-1, 4).reshape(-1)
    loss = knowledge_distillation_kl_div_loss(pred_corners, soft_corners, T) * weight
    return loss_weight * loss.sum() / 4.0  # mmdet weight_reduce_loss, reduction mean, avg_factor 4


def _case(seed=0, batch=2, classes=3):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, 4 * REG_MAX, ANCHORS, generator=g)
    t = 3 * torch.randn(batch, 4 * REG_MAX, ANCHORS, generator=g)
    scores = 2 * torch.randn(batch, classes, ANCHORS, generator=g) - 1
    return s, t, scores


@pytest.mark.parametrize("temperature", [10.0, 1.0])
def test_matches_the_authors_code_with_teacher_score_weights(temperature):
    s, t, scores = _case()
    weight = scores.sigmoid().amax(dim=1)
    expected = reference_ld(s, t, weight, T=temperature) / weight.sum()
    loss = build_loss("ld", temperature=temperature)
    torch.testing.assert_close(loss([s, scores], [t, scores]), expected)
    # the student's scores play no part: only the teacher says where objects are
    torch.testing.assert_close(loss([s, torch.zeros_like(scores)], [t, scores]), expected)


def test_a_single_tap_weighs_every_anchor_point_equally():
    s, t, _ = _case(1)
    ones = torch.ones(s.shape[0], ANCHORS)
    torch.testing.assert_close(build_loss("ld")(s, t), reference_ld(s, t, ones) / ones.sum())


def test_zero_at_identity_and_blind_to_a_shift_of_a_sides_logits():
    s, _, scores = _case(2)
    loss = build_loss("ld")
    assert float(loss(s, s.clone())) == pytest.approx(0.0, abs=1e-6)
    shifted = s.view(2, 4, REG_MAX, ANCHORS) + torch.randn(2, 4, 1, ANCHORS)  # softmax-invariant
    torch.testing.assert_close(loss(shifted.view_as(s), s), torch.tensor(0.0), atol=1e-5, rtol=0)
    assert float(loss([s, scores], [s.clone(), scores])) == pytest.approx(0.0, abs=1e-6)


def test_bins_are_grouped_per_side_as_the_dfl_layer_reads_them():
    """Swapping two sides' distributions in both models changes nothing; swapping one bin between
    sides (a different grouping) does."""
    s, t, _ = _case(3)
    loss = build_loss("ld")

    def swap_sides(x):
        return x.view(2, 4, REG_MAX, ANCHORS)[:, [1, 0, 2, 3]].reshape_as(x)

    torch.testing.assert_close(loss(swap_sides(s), swap_sides(t)), loss(s, t))
    regrouped = s.clone()
    regrouped[:, [0, REG_MAX]] = s[:, [REG_MAX, 0]]  # first bin of side 0 <-> side 1 in the student
    assert not torch.isclose(loss(regrouped, t), loss(s, t))


def test_gradients_reach_the_student_boxes_only():
    s, t, scores = _case(4)
    s, t = s.requires_grad_(), t.requires_grad_()
    student_scores, scores = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    build_loss("ld")([s, student_scores], [t, scores]).backward()
    assert s.grad.abs().sum() > 0
    assert t.grad is None and scores.grad is None and student_scores.grad is None


def test_yolo26_direct_regression_is_refused_with_the_fix():
    direct = torch.randn(2, 4, ANCHORS)  # reg_max = 1
    with pytest.raises(DistillError, match=r"reg_max > 1.*YOLO26.*use score_kd/fgd instead"):
        ld_loss(direct, direct)


def test_errors():
    s, t, scores = _case()
    loss = build_loss("ld")
    with pytest.raises(DistillError, match="equal shape"):
        loss(s, t[:, :, :5])
    with pytest.raises(DistillError, match="not @scores"):
        loss(scores, scores)
    with pytest.raises(DistillError, match="same taps"):
        loss(s, [t, scores])
    with pytest.raises(DistillError, match=r'\["@boxes", "@scores"\]'):
        loss([s], [t])
    with pytest.raises(DistillError, match="second tap must be @scores"):
        loss([s, scores], [t, scores[:, :, :4]])
    with pytest.raises(ValueError, match="ld: temperature"):
        build_loss("ld", temperature=0)


class _HeadTask(Task):
    """A stand-in detection task whose 'model' returns box and class logits of a dense head."""

    name, primary_metric = "head", "none"

    def split(self, batch):
        return Batch(batch, None, {})

    def forward(self, model, inputs):
        out = model(inputs).flatten(2)  # (B, 4 * reg_max + classes, A)
        return {"boxes": out[:, : 4 * REG_MAX], "scores": out[:, 4 * REG_MAX :]}

    def loss(self, outputs, batch):
        return outputs["scores"].sigmoid().mean()


def test_one_training_step_through_the_distiller_with_list_taps():
    torch.manual_seed(0)
    student = nn.Conv2d(3, 4 * REG_MAX + 3, 3, stride=4, padding=1)
    teacher = nn.Conv2d(3, 4 * REG_MAX + 3, 3, stride=4, padding=1)
    taps = ["@boxes", "@scores"]
    distiller = Distiller(
        student, _HeadTask(), teacher=teacher, terms=[Term(build_loss("ld"), taps, taps)]
    )
    images = torch.randn(2, 3, 16, 16)
    distiller.setup(images)
    step = distiller(distiller.task.split(images))
    step.parts["ld"].backward()
    assert torch.isfinite(step.parts["ld"]) and step.parts["ld"] > 0
    assert student.weight.grad.abs().sum() > 0 and teacher.weight.grad is None
