"""IRG (Liu et al. 2019). The authors' code is Caffe; the reference transcribes the PyTorch port in
Knowledge-Distillation-Zoo (AberHu, kd_losses/irg.py, class ``IRG``, tabs to spaces), called as its
train_kd.py does: ``IRG(w_vert, w_edge, w_tran)([rb2, rb3, feat, out]_s, [...]_t)``. Values and
gradients must agree. Properties: edges ignore translation, rotation and scale of a feature space; the
loss is unchanged when the batch is reordered; the channel-group average generalises the port's pairs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.losses import build_loss
from distill.losses.irg import edge_matrix, transformation


# ---- reference: Knowledge-Distillation-Zoo kd_losses/irg.py, verbatim up to indentation
class _RefIRG(nn.Module):
    def __init__(self, w_irg_vert, w_irg_edge, w_irg_tran):
        super().__init__()
        self.w_irg_vert = w_irg_vert
        self.w_irg_edge = w_irg_edge
        self.w_irg_tran = w_irg_tran

    def forward(self, irg_s, irg_t):
        fm_s1, fm_s2, feat_s, out_s = irg_s
        fm_t1, fm_t2, feat_t, out_t = irg_t

        loss_irg_vert = F.mse_loss(out_s, out_t)

        irg_edge_feat_s = self.euclidean_dist_feat(feat_s, squared=True)
        irg_edge_feat_t = self.euclidean_dist_feat(feat_t, squared=True)
        irg_edge_fm_s1 = self.euclidean_dist_fm(fm_s1, squared=True)
        irg_edge_fm_t1 = self.euclidean_dist_fm(fm_t1, squared=True)
        irg_edge_fm_s2 = self.euclidean_dist_fm(fm_s2, squared=True)
        irg_edge_fm_t2 = self.euclidean_dist_fm(fm_t2, squared=True)
        loss_irg_edge = (
            F.mse_loss(irg_edge_feat_s, irg_edge_feat_t)
            + F.mse_loss(irg_edge_fm_s1, irg_edge_fm_t1)
            + F.mse_loss(irg_edge_fm_s2, irg_edge_fm_t2)
        ) / 3.0

        irg_tran_s = self.euclidean_dist_fms(fm_s1, fm_s2, squared=True)
        irg_tran_t = self.euclidean_dist_fms(fm_t1, fm_t2, squared=True)
        loss_irg_tran = F.mse_loss(irg_tran_s, irg_tran_t)

        loss = (
            self.w_irg_vert * loss_irg_vert
            + self.w_irg_edge * loss_irg_edge
            + self.w_irg_tran * loss_irg_tran
        )
        return loss

    def euclidean_dist_fms(self, fm1, fm2, squared=False, eps=1e-12):
        if fm1.size(2) > fm2.size(2):
            fm1 = F.adaptive_avg_pool2d(fm1, (fm2.size(2), fm2.size(3)))
        if fm1.size(1) < fm2.size(1):
            fm2 = (fm2[:, 0::2, :, :] + fm2[:, 1::2, :, :]) / 2.0
        fm1 = fm1.view(fm1.size(0), -1)
        fm2 = fm2.view(fm2.size(0), -1)
        fms_dist = torch.sum(torch.pow(fm1 - fm2, 2), dim=-1).clamp(min=eps)
        if not squared:
            fms_dist = fms_dist.sqrt()
        fms_dist = fms_dist / fms_dist.max()
        return fms_dist

    def euclidean_dist_fm(self, fm, squared=False, eps=1e-12):
        fm = fm.view(fm.size(0), -1)
        fm_square = fm.pow(2).sum(dim=1)
        fm_prod = torch.mm(fm, fm.t())
        fm_dist = (fm_square.unsqueeze(0) + fm_square.unsqueeze(1) - 2 * fm_prod).clamp(min=eps)
        if not squared:
            fm_dist = fm_dist.sqrt()
        fm_dist = fm_dist.clone()
        fm_dist[range(len(fm)), range(len(fm))] = 0
        fm_dist = fm_dist / fm_dist.max()
        return fm_dist

    def euclidean_dist_feat(self, feat, squared=False, eps=1e-12):
        feat_square = feat.pow(2).sum(dim=1)
        feat_prod = torch.mm(feat, feat.t())
        feat_dist = (feat_square.unsqueeze(0) + feat_square.unsqueeze(1) - 2 * feat_prod).clamp(
            min=eps
        )
        if not squared:
            feat_dist = feat_dist.sqrt()
        feat_dist = feat_dist.clone()
        feat_dist[range(len(feat)), range(len(feat))] = 0
        feat_dist = feat_dist / feat_dist.max()
        return feat_dist


def _taps(seed=0, b=10):
    """ResNet-like taps: stage 2 (8x8), stage 3 (4x4, twice the channels), pooled features, logits."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(b, *shape, generator=g)

    student = [rand(8, 8, 8).relu(), rand(16, 4, 4).relu(), rand(16), rand(10)]
    teacher = [rand(16, 8, 8).relu(), rand(32, 4, 4).relu(), rand(32), 3 * rand(10)]
    return student, teacher


@pytest.mark.parametrize(
    "weights", [(0.1, 5.0, 5.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0, 0, 1.0)]
)
def test_parity_with_knowledge_distillation_zoo_values_and_gradients(weights):
    student, teacher = _taps()
    ours_in = [x.clone().requires_grad_() for x in student]
    ref_in = [x.clone().requires_grad_() for x in student]
    names = ("vertex_weight", "edge_weight", "transform_weight")
    ours = build_loss("irg", **dict(zip(names, weights, strict=True)))
    value, ref = ours(ours_in, teacher), _RefIRG(*weights)(ref_in, teacher)
    torch.testing.assert_close(value, ref)
    value.backward()
    ref.backward()
    for a, b in zip(ours_in, ref_in, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_channel_groups_generalise_the_ports_channel_pairs():
    g = torch.Generator().manual_seed(1)
    earlier, later = torch.randn(6, 4, 6, 6, generator=g), torch.randn(6, 16, 3, 3, generator=g)
    grouped = later.reshape(6, 4, 4, 3, 3).mean(2)  # channels (0..3), (4..7), ... averaged
    pooled = F.adaptive_avg_pool2d(earlier, 3)
    d = (pooled - grouped).flatten(1).pow(2).sum(1)
    torch.testing.assert_close(transformation(earlier, later), d / d.max())
    with pytest.raises(ValueError, match="cannot relate maps"):
        transformation(earlier, torch.randn(6, 6, 3, 3))  # 6 is not a multiple of 4
    with pytest.raises(ValueError, match="cannot relate maps"):
        transformation(later, earlier)  # the later map may not be larger


def test_edges_ignore_translation_rotation_and_scale_of_a_feature_space():
    student, teacher = _taps(2)
    feats = teacher[2]
    g = torch.Generator().manual_seed(3)
    rotation, _ = torch.linalg.qr(torch.randn(32, 32, generator=g))
    moved = 7.0 * feats @ rotation + torch.randn(32, generator=g)
    torch.testing.assert_close(edge_matrix(moved), edge_matrix(feats), atol=1e-5, rtol=1e-4)
    loss = build_loss("irg", transform_weight=0.0)
    torch.testing.assert_close(
        loss(student[2:], [moved, teacher[3]]),
        loss(student[2:], teacher[2:]),
        atol=1e-5,
        rtol=1e-4,
    )


def test_unchanged_when_the_batch_is_reordered_and_zero_at_identity():
    student, teacher = _taps(4)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(5))
    loss = build_loss("irg")
    torch.testing.assert_close(
        loss([x[perm] for x in student], [x[perm] for x in teacher]), loss(student, teacher)
    )
    assert float(loss(teacher, teacher)) == 0.0


def test_a_single_tap_gives_vertex_and_edge_on_it():
    _, teacher = _taps(6)
    student = torch.randn(10, 10, generator=torch.Generator().manual_seed(7))
    value = build_loss("irg")(student, teacher[3])
    expected = 0.1 * F.mse_loss(student, teacher[3]) + 5.0 * F.mse_loss(
        edge_matrix(student), edge_matrix(teacher[3])
    )
    torch.testing.assert_close(value, expected)


def test_teacher_gets_no_gradient():
    student, teacher = _taps(8)
    s = [x.clone().requires_grad_() for x in student]
    t = [x.clone().requires_grad_() for x in teacher]
    build_loss("irg")(s, t).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)


def test_bad_inputs_and_options():
    student, teacher = _taps(9)
    loss = build_loss("irg")
    with pytest.raises(ValueError, match="put '@logits' last"):
        loss(student[:3], teacher[:3])  # the pooled features differ in width
    with pytest.raises(ValueError, match="student taps but"):
        loss(student, teacher[1:])
    with pytest.raises(ValueError, match="edge_weight must be >= 0"):
        build_loss("irg", edge_weight=-1)
