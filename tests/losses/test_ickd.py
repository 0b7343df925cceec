"""ICKD (Liu et al. 2021). The reference transcribes ``ICKDLoss`` and ``Embed`` of the authors' code
(ADLab-AutoDrive/ICKD, Cifar100/distiller_zoo/ICKD.py) with the embedding's weights copied from ours;
values and gradients must agree in training and eval mode. Properties: the correlation matrices ignore
the scale of each sample's features and the positions of the patterns (any spatial permutation), and
relabelling the channels of both maps the same way leaves the loss unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.losses import build_loss
from distill.losses.ickd import (
    Embed,
    _row_distances_direct,
    _row_distances_low_rank,
    channel_correlation,
)


# ---- reference: ICKD.py (Cifar100), verbatim up to the constructor's arguments
class _RefEmbed(nn.Module):
    def __init__(self, dim_in=256, dim_out=128):
        super().__init__()
        self.conv2d = nn.Conv2d(dim_in, dim_out, kernel_size=1, stride=1, padding=0, bias=False)
        self.l2norm = nn.BatchNorm2d(dim_out)

    def forward(self, x):
        x = self.conv2d(x)
        x = self.l2norm(x)
        return x


class _RefICKDLoss(nn.Module):
    def __init__(self, s_dim, feat_dim):
        super().__init__()
        self.embed_s = _RefEmbed(s_dim, feat_dim)

    def forward(self, g_s, g_t):
        return [self.batch_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t, strict=True)]

    def batch_loss(self, f_s, f_t):
        f_s = self.embed_s(f_s)
        bsz, ch = f_s.shape[0], f_s.shape[1]
        f_s = f_s.view(bsz, ch, -1)
        f_t = f_t.view(bsz, ch, -1)
        emd_s = torch.bmm(f_s, f_s.permute(0, 2, 1))
        emd_s = torch.nn.functional.normalize(emd_s, dim=2)
        emd_t = torch.bmm(f_t, f_t.permute(0, 2, 1))
        emd_t = torch.nn.functional.normalize(emd_t, dim=2)
        G_diff = emd_s - emd_t
        loss = (G_diff * G_diff).view(bsz, -1).sum() / (ch * bsz)
        return loss


def _maps(seed=0, b=6, cs=8, ct=16, hs=5, ht=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, cs, hs, hs, generator=g), torch.randn(b, ct, ht, ht, generator=g).relu()


def _pair(student, teacher):
    torch.manual_seed(0)
    loss = build_loss("ickd")
    loss.build(student, teacher)
    ref = _RefICKDLoss(student.shape[1], teacher.shape[1])
    with torch.no_grad():  # same random embedding; BN affine params perturbed away from (1, 0)
        loss.embed.bn.weight.uniform_(0.5, 1.5)
        loss.embed.bn.bias.uniform_(-0.2, 0.2)
        ref.embed_s.conv2d.weight.copy_(loss.embed.conv.weight)
        ref.embed_s.l2norm.weight.copy_(loss.embed.bn.weight)
        ref.embed_s.l2norm.bias.copy_(loss.embed.bn.bias)
    return loss, ref


@pytest.mark.parametrize("size", [4, 8], ids=["low_rank", "direct"])  # HW=16 < C=16 * 2, HW=64
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_parity_with_the_authors_code_values_and_gradients(train, size):
    student, teacher = _maps(hs=size, ht=size)  # the authors' view() needs equal spatial sizes
    loss, ref = _pair(student, teacher)
    loss.train(train)
    ref.train(train)
    s1, s2 = student.clone().requires_grad_(), student.clone().requires_grad_()
    ours, theirs = loss(s1, teacher), sum(ref([s2], [teacher]))
    torch.testing.assert_close(ours, theirs)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(s1.grad, s2.grad)
    torch.testing.assert_close(loss.embed.conv.weight.grad, ref.embed_s.conv2d.weight.grad)
    torch.testing.assert_close(loss.embed.bn.weight.grad, ref.embed_s.l2norm.weight.grad)


def test_embed_is_a_conv1x1_bn_to_the_teachers_channels_built_from_the_example():
    student, teacher = _maps(1)  # spatial sizes differ: 5x5 vs 4x4
    loss = build_loss("ickd")
    with pytest.raises(RuntimeError, match="build"):
        loss(student, teacher)
    loss.build(student, teacher)
    assert isinstance(loss.embed, Embed)
    assert (loss.embed.conv.in_channels, loss.embed.conv.out_channels) == (8, 16)
    assert loss.embed.conv.bias is None and isinstance(loss.embed.bn, nn.BatchNorm2d)
    value = loss(student, teacher)
    assert torch.isfinite(value)
    with pytest.raises(ValueError, match="feature maps"):
        build_loss("ickd").build(torch.zeros(4, 8), torch.zeros(4, 16))


def test_correlations_ignore_feature_scale_and_positions():
    _, teacher = _maps(2, ht=5)
    g = torch.Generator().manual_seed(3)
    scale = torch.rand(6, 1, 1, 1, generator=g) * 10 + 0.1
    perm = torch.randperm(25, generator=g)
    shuffled = teacher.flatten(2)[:, :, perm].view_as(teacher)
    torch.testing.assert_close(channel_correlation(scale * shuffled), channel_correlation(teacher))
    # so a student that is a rescaled, spatially shuffled (and resized) copy has loss 0 without embed
    loss = build_loss("ickd", embed=False)
    loss.build(teacher, teacher)
    assert float(loss(teacher, teacher)) == 0.0
    assert float(loss(3.0 * shuffled, teacher)) < 1e-6  # float32 rounding of 2 - 2 cos
    # rows are unit vectors, so each squared row difference is at most 4: the loss is in [0, 4]
    other = torch.randn(6, 16, 3, 3, generator=g)
    assert 0 < float(loss(other, teacher)) <= 4


@pytest.mark.parametrize("hw", [(2, 3), (5, 5), (1, 7)])
def test_low_rank_path_equals_the_gram_matrices(hw):
    """Without the (C, C) matrices: same sums (float64), also with a dead channel and unequal sizes."""
    g = torch.Generator().manual_seed(7)
    f_s = torch.randn(3, 20, hw[0] * hw[0], generator=g, dtype=torch.float64)
    f_t = torch.randn(3, 20, hw[1] * hw[1], generator=g, dtype=torch.float64).relu()
    f_s[:, 4] = 0
    f_t[:, 4:6] = 0
    direct, low_rank = _row_distances_direct(f_s, f_t), _row_distances_low_rank(f_s, f_t)
    torch.testing.assert_close(low_rank, direct, rtol=1e-10, atol=1e-10)
    a, b = f_s.clone().requires_grad_(), f_s.clone().requires_grad_()
    _row_distances_direct(a, f_t).sum().backward()
    _row_distances_low_rank(b, f_t).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-8, atol=1e-10)


def test_relabelling_channels_of_both_maps_leaves_the_loss_unchanged():
    g = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(5, 12, 3, 3, generator=g), torch.randn(5, 12, 4, 4, generator=g)
    perm = torch.randperm(12, generator=g)
    loss = build_loss("ickd", embed=False)
    loss.build(student, teacher)
    torch.testing.assert_close(loss(student[:, perm], teacher[:, perm]), loss(student, teacher))


def test_teacher_gets_no_gradient_and_embed_trains():
    student, teacher = _maps(5)
    loss = build_loss("ickd")
    loss.build(student, teacher)
    s, t = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    loss(s, t).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    assert loss.embed.conv.weight.grad.abs().sum() > 0


def test_bad_inputs_and_options():
    with pytest.raises(ValueError, match="embed must be true or false"):
        build_loss("ickd", embed="yes")
    loss = build_loss("ickd", embed=False)
    student, teacher = _maps(6)
    loss.build(student, teacher)
    with pytest.raises(ValueError, match="same batch size and channel count"):
        loss(student, teacher)
    # an all-zero (dead, post-ReLU) channel gives a zero row, not NaN
    dead = teacher.clone()
    dead[:, 0] = 0
    assert torch.isfinite(channel_correlation(dead)).all()
    assert torch.isfinite(build_loss("ickd", embed=False)(dead, teacher))
