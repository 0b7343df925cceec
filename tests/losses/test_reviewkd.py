"""ReviewKD (Chen et al. 2021) against a transcription of the authors' code, plus the properties the
method rests on: HCL is a normalised mix of per-scale MSEs, the review direction (shallow outputs see
deep features, not the other way round), ABF as a convex-ish attention blend, and shape handling.

The reference follows dvlab-research/ReviewKD ``CIFAR-100/model/reviewkd.py`` (``ABF``, the
``ReviewKD.forward`` fusion loop, ``hcl``); mdistiller ``distillers/ReviewKD.py`` is the same code.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.losses import build_loss
from distill.losses.reviewkd import ReviewKDLoss, hcl_loss


# ----------------------------------------------------------------------------- reference (official)
class RefABF(nn.Module):
    def __init__(self, in_channel, mid_channel, out_channel, fuse):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid_channel),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channel, out_channel, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(out_channel),
        )
        if fuse:
            self.att_conv = nn.Sequential(
                nn.Conv2d(mid_channel * 2, 2, kernel_size=1), nn.Sigmoid()
            )
        else:
            self.att_conv = None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x, y=None, shape=None, out_shape=None):
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            y = F.interpolate(y, (shape, shape), mode="nearest")
            z = torch.cat([x, y], dim=1)
            z = self.att_conv(z)
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        y = self.conv2(x)
        return y, x


class RefReview(nn.Module):
    """``ReviewKD`` without the student network: takes the student features directly."""

    def __init__(self, in_channels, out_channels, shapes, out_shapes):
        super().__init__()
        self.shapes = shapes
        self.out_shapes = shapes if out_shapes is None else out_shapes
        abfs = nn.ModuleList()
        mid_channel = min(512, in_channels[-1])
        for idx, in_channel in enumerate(in_channels):
            abfs.append(
                RefABF(in_channel, mid_channel, out_channels[idx], idx < len(in_channels) - 1)
            )
        self.abfs = abfs[::-1]

    def forward(self, features):
        x = features[::-1]
        results = []
        out_features, res_features = self.abfs[0](x[0], out_shape=self.out_shapes[0])
        results.append(out_features)
        for feats, abf, shape, out_shape in zip(
            x[1:], self.abfs[1:], self.shapes[1:], self.out_shapes[1:], strict=False
        ):
            out_features, res_features = abf(feats, res_features, shape, out_shape)
            results.insert(0, out_features)
        return results


def ref_hcl(fstudent, fteacher):
    loss_all = 0.0
    for fs, ft in zip(fstudent, fteacher, strict=False):
        n, c, h, w = fs.shape
        loss = F.mse_loss(fs, ft, reduction="mean")
        cnt = 1.0
        tot = 1.0
        for l in [4, 2, 1]:  # noqa: E741 - the official name
            if l >= h:
                continue
            tmpfs = F.adaptive_avg_pool2d(fs, (l, l))
            tmpft = F.adaptive_avg_pool2d(ft, (l, l))
            cnt /= 2.0
            loss += F.mse_loss(tmpfs, tmpft, reduction="mean") * cnt
            tot += cnt
        loss = loss / tot
        loss_all = loss_all + loss
    return loss_all


# ----------------------------------------------------------------------------- helpers
def features(batch, channels, sizes, seed):
    """Shallow-to-deep maps; the deepest level is a pooled (B, C) vector as in the official code."""
    g = torch.Generator().manual_seed(seed)
    maps = [
        torch.randn(batch, c, s, s, generator=g)
        for c, s in zip(channels[:-1], sizes[:-1], strict=True)
    ]
    return [*maps, torch.randn(batch, channels[-1], generator=g)]


def paired(s_channels, t_channels, s_sizes, t_sizes, batch=4):
    """Our loss and the reference with the same fusion weights."""
    s = features(batch, s_channels, s_sizes, seed=1)
    t = features(batch, t_channels, t_sizes, seed=2)
    torch.manual_seed(0)
    ref = RefReview(s_channels, t_channels, shapes=s_sizes[::-1], out_shapes=t_sizes[::-1])
    ours = ReviewKDLoss()
    ours.build(s, t)
    for level, fusion in enumerate(ours.fusions):  # ref.abfs is deep-to-shallow
        fusion.load_state_dict(ref.abfs[len(ours.fusions) - 1 - level].state_dict())
    return ours, ref, s, t


CASES = {
    # resnet8x4-like student and resnet32x4-like teacher: same sizes, more teacher channels
    "same-sizes": ([8, 16, 32, 32], [16, 32, 64, 64], [16, 8, 4, 1], [16, 8, 4, 1]),
    # ShuffleNet-like student: half the teacher's spatial size at every level (official out_shapes)
    "smaller-student": ([12, 24, 48, 48], [16, 32, 64, 64], [8, 4, 2, 1], [16, 8, 4, 1]),
}


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_the_official_code(case):
    ours, ref, s, t = paired(*CASES[case])
    s_ours = [x.clone().requires_grad_() for x in s]
    s_ref = [x.clone().requires_grad_() for x in s]
    mine = ours(s_ours, t)
    # the official code feeds the pooled feature as a (B, C, 1, 1) map
    as_maps = [x if x.ndim == 4 else x[:, :, None, None] for x in s_ref]
    t_maps = [x if x.ndim == 4 else x[:, :, None, None] for x in t]
    theirs = ref_hcl(ref(as_maps), t_maps)
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    mine.backward()
    theirs.backward()
    for a, b in zip(s_ours, s_ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)
    for level, fusion in enumerate(ours.fusions):
        ref_fusion = ref.abfs[len(ours.fusions) - 1 - level]
        for (name, p), q in zip(fusion.named_parameters(), ref_fusion.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_hcl_parity_and_mid_channels_rule():
    g = torch.Generator().manual_seed(0)
    fs = [torch.randn(3, 4, h, h, generator=g) for h in (9, 4, 2, 1)]
    ft = [torch.randn(3, 4, h, h, generator=g) for h in (9, 4, 2, 1)]
    torch.testing.assert_close(hcl_loss(fs, ft), ref_hcl(fs, ft))
    loss = ReviewKDLoss()
    loss.build([torch.zeros(2, 8, 4, 4), torch.zeros(2, 600)], [torch.zeros(2, 8, 4, 4)] * 2)
    assert loss.fusions[0].conv1[0].out_channels == 512  # min(512, deepest student channels)
    loss = ReviewKDLoss(mid_channels=64)
    loss.build([torch.zeros(2, 8, 4, 4), torch.zeros(2, 600)], [torch.zeros(2, 8, 4, 4)] * 2)
    assert loss.fusions[1].conv1[0].out_channels == 64


# ----------------------------------------------------------------------------- properties
def test_hcl_is_a_normalised_mix_of_per_scale_mses():
    """Weights 1, 1/2, 1/4, ... over the scales used are normalised: spatially constant maps, whose
    pooled versions are themselves, give exactly the plain MSE; and identical maps give 0."""
    g = torch.Generator().manual_seed(0)
    fs = torch.randn(2, 3, 1, 1, generator=g).expand(2, 3, 8, 8)
    ft = torch.randn(2, 3, 1, 1, generator=g).expand(2, 3, 8, 8)
    torch.testing.assert_close(hcl_loss([fs], [ft]), F.mse_loss(fs, ft))
    x = torch.randn(2, 3, 8, 8, generator=g)
    assert float(hcl_loss([x], [x.clone()])) == 0.0
    # a 1x1 map (pooled features) has no pyramid: plain MSE
    v, w = torch.randn(2, 5, 1, 1, generator=g), torch.randn(2, 5, 1, 1, generator=g)
    torch.testing.assert_close(hcl_loss([v], [w]), F.mse_loss(v, w))


def test_review_direction_shallow_outputs_see_deep_features_only():
    """Knowledge review: the shallowest fused output depends on the deepest student feature, while the
    deepest output does not depend on shallower ones."""
    loss, _, s, t = paired(*CASES["same-sizes"])
    s = [x.clone().requires_grad_() for x in s]
    maps = [x if x.ndim == 4 else x[:, :, None, None] for x in s]
    outputs = loss.review(maps, [y.shape[-2:] if y.ndim == 4 else (1, 1) for y in t])
    assert [tuple(o.shape) for o in outputs] == [
        (4, 16, 16, 16),
        (4, 32, 8, 8),
        (4, 64, 4, 4),
        (4, 64, 1, 1),
    ]
    (deep_on_shallow,) = torch.autograd.grad(outputs[0].sum(), s[-1], retain_graph=True)
    assert deep_on_shallow.abs().sum() > 0
    shallow_on_deep = torch.autograd.grad(outputs[-1].sum(), s[0], allow_unused=True)[0]
    assert shallow_on_deep is None or not shallow_on_deep.any()


def test_attention_blend_stays_between_its_inputs_scaled():
    """ABF: fused = x * a0 + y * a1 with sigmoid weights in (0, 1) per position."""
    loss = ReviewKDLoss(mid_channels=3)
    loss.build([torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 2, 2)], [torch.zeros(2, 3, 4, 4)] * 2)
    abf = loss.fusions[0].eval()
    x, deeper = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)
    _, fused = abf(x, deeper, (4, 4))
    with torch.no_grad():
        a = abf.conv1(x).abs() + F.interpolate(deeper, size=(4, 4), mode="nearest").abs()
    assert (fused.abs() <= a + 1e-6).all()


def test_teacher_gets_no_gradient_and_bf16_is_computed_in_float32():
    loss, _, s, t = paired(*CASES["smaller-student"])
    t = [x.clone().requires_grad_() for x in t]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss([x.bfloat16() for x in s], t)
    assert value.dtype == torch.float32
    value.backward()
    assert all(x.grad is None for x in t)


def test_single_tap_works_as_one_level():
    loss = build_loss("reviewkd")
    s, t = torch.randn(2, 4, 6, 6), torch.randn(2, 8, 3, 3)
    loss.build(s, t)
    assert len(loss.fusions) == 1 and loss.fusions[0].att_conv is None
    assert torch.isfinite(loss(s, t))


# ----------------------------------------------------------------------------- errors
def test_level_count_mismatch_is_a_one_line_error():
    loss = ReviewKDLoss()
    with pytest.raises(DistillError, match="2 levels but the teacher 3") as err:
        loss.build([torch.zeros(2, 3, 4, 4)] * 2, [torch.zeros(2, 3, 4, 4)] * 3)
    assert "\n" not in str(err.value)
    with pytest.raises(DistillError, match="shape"):
        loss.build([torch.zeros(2, 3, 4)], [torch.zeros(2, 3, 4, 4)])
    with pytest.raises(DistillError, match="build"):
        loss([torch.zeros(2, 3, 4, 4)], [torch.zeros(2, 3, 4, 4)])


@pytest.mark.parametrize(
    "options, needle", [({"mid_channels": 0}, "mid_channels"), ({"levels": [4, 0]}, "levels")]
)
def test_bad_options(options, needle):
    with pytest.raises(ValueError, match=needle):
        ReviewKDLoss(**options)
