"""score_kd: the PP-YOLOE distiller's class-score loss, and the properties of a soft-target BCE.

The reference transcribes mmrazor's port of PaddleDetection's ``DistillPPYOLOELoss.quality_focal_loss``
(``QualityFocalLoss``: logits in, ``binary_cross_entropy_with_logits`` against the teacher's sigmoid,
times ``|p_s - p_t|^beta``, summed over classes, ``.mean()`` over anchors when ``num_total_pos`` is
``None``). Our inputs are the head's ``(B, classes, anchors)``; the reference takes ``(anchors, classes)``
rows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses import build_loss
from distill.losses.score_kd import score_kd_loss


def quality_focal_loss(pred_logits, soft_target_logits, beta=2.0, num_total_pos=None):
    soft_target = soft_target_logits.sigmoid()
    pred_sigmoid = pred_logits.sigmoid()
    scale_factor = pred_sigmoid - soft_target
    loss = F.binary_cross_entropy_with_logits(
        pred_logits, soft_target, reduction="none"
    ) * scale_factor.abs().pow(beta)
    loss = loss.sum(dim=1, keepdim=False)
    if num_total_pos is not None:
        loss = loss.sum() / num_total_pos
    else:
        loss = loss.mean()
    return loss


def _rows(scores):  # (B, C, A) -> (B * A, C)
    return scores.permute(0, 2, 1).reshape(-1, scores.shape[1])


def _case(seed=0, batch=2, classes=5, anchors=21):
    g = torch.Generator().manual_seed(seed)
    s = 2 * torch.randn(batch, classes, anchors, generator=g)
    t = 3 * torch.randn(batch, classes, anchors, generator=g) - 2  # mostly background, like a head
    return s, t


@pytest.mark.parametrize("beta", [0.0, 2.0])
def test_matches_the_pp_yoloe_distiller(beta):
    s, t = _case()
    expected = quality_focal_loss(_rows(s), _rows(t), beta=beta)
    torch.testing.assert_close(build_loss("score_kd", beta=beta)(s, t), expected)


def test_temperature_softens_both_sides_and_scales_by_t_squared():
    s, t = _case(1)
    expected = 4 * quality_focal_loss(_rows(s) / 2, _rows(t) / 2, beta=0.0)
    torch.testing.assert_close(score_kd_loss(s, t, temperature=2.0), expected)


def test_identity_is_the_minimum_with_zero_gradient():
    s, _ = _case(2)
    s = s.requires_grad_()
    at_identity = score_kd_loss(s, s.detach().clone())
    at_identity.backward()
    assert s.grad.abs().max() < 1e-7
    for seed in range(3):  # any other student costs more
        other = s.detach() + 0.1 * torch.randn(
            s.shape, generator=torch.Generator().manual_seed(seed)
        )
        assert score_kd_loss(other, s.detach()) > at_identity


def test_the_gradient_is_the_probability_gap():
    """d L / d z_s = (sigmoid(z_s) - sigmoid(z_t)) / (anchors of the batch): the BCE's defining property."""
    s, t = _case(3)
    s = s.requires_grad_()
    score_kd_loss(s, t).backward()
    expected = (s.detach().sigmoid() - t.sigmoid()) / (s.shape[0] * s.shape[2])
    torch.testing.assert_close(s.grad, expected)


def test_teacher_weighting_follows_the_teachers_confidence():
    s, t = _case(4)
    weight = t.sigmoid().amax(dim=1)  # (B, A)
    per_anchor = F.binary_cross_entropy_with_logits(s, t.sigmoid(), reduction="none").sum(dim=1)
    expected = (per_anchor * weight).sum() / weight.sum()
    torch.testing.assert_close(build_loss("score_kd", teacher_weighted=True)(s, t), expected)
    # an anchor the teacher calls background (all scores ~0) barely counts, whatever the student says
    t_bg = t.clone()
    t_bg[0, :, 0] = -30.0
    s_far = s.clone()
    s_far[0, :, 0] = 30.0
    weighted = build_loss("score_kd", teacher_weighted=True)
    assert abs(float(weighted(s_far, t_bg)) - float(weighted(s, t_bg))) < 1e-6


def test_gradients_never_reach_the_teacher():
    s, t = _case(5)
    s, t = s.requires_grad_(), t.requires_grad_()
    score_kd_loss(s, t, beta=2.0, teacher_weighted=True).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None


def test_errors():
    s, t = _case()
    with pytest.raises(
        DistillError, match=r"score_kd: needs class logits \(B, num_classes, anchors\)"
    ):
        score_kd_loss(s, t[:, :3])
    with pytest.raises(DistillError, match="tap @scores"):
        score_kd_loss(s[:, :, 0], t[:, :, 0])
    for bad in ({"temperature": 0.0}, {"beta": -1.0}):
        with pytest.raises(ValueError, match="score_kd: "):
            build_loss("score_kd", **bad)
