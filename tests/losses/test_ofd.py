"""OFD (Heo et al., ICCV 2019) against the official code and its defining properties.

The references transcribe megvii-research/mdistiller ``mdistiller/distillers/OFD.py`` (``feat_loss``,
the margin computed in ``init_ofd_modules`` from a BN layer, the level weights in ``ofd_loss``) and the
authors' clovaai/overhaul-distillation ``distillation_loss`` (CIFAR: summed, divided by the batch size).
``scipy.stats.norm.cdf`` is written with ``math.erfc``.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses import build_loss
from distill.losses.ofd import ofd_loss, ofd_margin


def norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def reference_margin(std: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """mdistiller's margin from a BN layer's weight (std) and bias (mean)."""
    margin = []
    for s, m in zip(std, mean, strict=True):
        s = abs(s.item())
        m = m.item()
        if norm_cdf(-m / s) > 0.001:
            margin.append(
                -s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / norm_cdf(-m / s) + m
            )
        else:
            margin.append(-3 * s)
    return torch.tensor(margin, dtype=torch.float64)


def reference_feat_loss(source, target, margin):
    """mdistiller ``feat_loss`` (sum over C, H, W; mean over the batch)."""
    loss = (
        (source - margin) ** 2 * ((source > margin) & (target <= margin)).float()
        + (source - target) ** 2 * ((source > target) & (target > margin) & (target <= 0)).float()
        + (source - target) ** 2 * (target > 0).float()
    )
    return torch.abs(loss).mean(dim=0).sum()


def reference_clovaai(source, target, margin):
    """overhaul-distillation ``distillation_loss`` divided by the batch size, as its CIFAR script does."""
    target = torch.max(target, margin)
    loss = F.mse_loss(source, target, reduction="none")
    loss = loss * ((source > target) | (target > 0)).float()
    return loss.sum() / source.shape[0]


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    students = [torch.randn(4, 6, 8, 8, generator=g), torch.randn(4, 8, 4, 4, generator=g)]
    teachers = [
        torch.randn(4, 12, 8, 8, generator=g) * 2 + 0.5,
        torch.randn(4, 16, 8, 8, generator=g) - 0.3,  # larger than the student: pooled
    ]
    return students, teachers


def _built(students, teachers):
    torch.manual_seed(0)
    loss = build_loss("ofd")
    loss.build(students, teachers)
    return loss


def test_margin_matches_official_formula():
    g = torch.Generator().manual_seed(0)
    std = torch.rand(64, generator=g) * 2 + 0.05
    mean = torch.randn(64, generator=g) * 2
    mean[:4] = torch.tensor([8.0, 20.0, -1.0, 0.0])  # includes the "-3 std" branch
    torch.testing.assert_close(
        ofd_margin(mean, std).double(), reference_margin(std, mean), rtol=1e-5, atol=1e-6
    )


def test_matches_mdistiller_and_clovaai_on_several_levels():
    students, teachers = _pair()
    loss = _built(students, teachers)
    loss.train()
    value = loss(students, teachers)
    # the same connectors (train-mode BN) and margins, through the official loss functions
    expected_md, expected_clova = 0.0, 0.0
    n = len(students)
    for i, (s, t, connector, margin) in enumerate(
        zip(students, teachers, loss.connectors, loss.margins(), strict=True)
    ):
        out = connector(s).detach()
        t = F.adaptive_avg_pool2d(t, out.shape[-2:])
        m = margin.view(1, -1, 1, 1)
        expected_md += reference_feat_loss(out, t, m) / 2 ** (n - i - 1)
        expected_clova += reference_clovaai(out, t, m) / 2 ** (n - i - 1)
    torch.testing.assert_close(value, expected_md, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(value, expected_clova, rtol=1e-5, atol=1e-5)


def test_connector_and_margin_are_built_as_official():
    students, teachers = _pair()
    loss = _built(students, teachers)
    conv, bn = loss.connectors[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (
        6,
        12,
        (1, 1),
        None,
    )
    assert abs(conv.weight.std().item() - math.sqrt(2 / 12)) < 0.1  # He-normal over fan-out
    assert torch.equal(bn.weight, torch.ones(12)) and torch.equal(bn.bias, torch.zeros(12))
    # margins from the teacher's example-batch statistics, through the official formula
    t = teachers[0]
    expected = reference_margin(t.std(dim=(0, 2, 3), unbiased=False), t.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(loss.margins()[0].double(), expected, rtol=1e-5, atol=1e-5)


def test_margin_is_the_mean_of_negative_responses():
    """On Gaussian pre-ReLU features the estimated margin is E[x | x < 0] of the data."""
    g = torch.Generator().manual_seed(5)
    mean, std = torch.tensor([-1.0, 0.0, 0.7]), torch.tensor([1.0, 2.0, 0.5])
    t = torch.randn(256, 3, 16, 16, generator=g) * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)
    loss = _built([torch.randn(256, 2, 16, 16)], [t])
    empirical = torch.stack([t[:, c][t[:, c] < 0].mean() for c in range(3)])
    torch.testing.assert_close(loss.margins()[0], empirical, rtol=0.02, atol=0.01)


def test_partial_l2_ignores_students_below_an_inactive_teacher():
    """Where the teacher is below the margin, any student response <= margin costs nothing; positive
    teacher responses are matched exactly; the loss is zero when the student equals max(t, m)."""
    margin = torch.tensor([-1.0, -0.5])
    t = torch.tensor([-3.0, -0.2, 0.0, 2.0]).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    target = torch.maximum(t, margin.view(1, -1, 1, 1))
    assert ofd_loss(target, t, margin) == 0
    low = target.clone()
    low[:, :, 0, 0] = -10.0  # below the margin where the teacher is "off": free
    assert ofd_loss(low, t, margin) == 0
    high = target.clone()
    high[:, :, 1, 1] += 1.0  # a positive teacher response missed by 1 in each of 2 channels
    assert ofd_loss(high, t, margin) == 2.0
    above = target.clone()
    above[:, 0, 0, 0] = (
        0.0  # the student is "on" where the teacher is "off": pulled down to the margin
    )
    assert ofd_loss(above, t, margin) == 1.0


def test_teacher_after_relu_warns_and_set_margins_overrides():
    s, t = torch.randn(2, 3, 4, 4), torch.rand(2, 5, 4, 4)
    loss = build_loss("ofd")
    with pytest.warns(UserWarning, match="pre-ReLU"):
        loss.build(s, t)
    bn_weight, bn_bias = torch.rand(5) + 0.5, torch.randn(5)
    loss.set_margins([ofd_margin(bn_bias, bn_weight)])  # the paper's BN-based margin
    torch.testing.assert_close(
        loss.margins()[0].double(), reference_margin(bn_weight, bn_bias), rtol=1e-5, atol=1e-6
    )
    assert set(loss.state_dict()) >= {"margin_0", "connectors.0.0.weight"}  # saved with checkpoints
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss.build(s, t - 0.5)  # pre-ReLU features: no warning


def test_errors():
    students, teachers = _pair()
    with pytest.raises(DistillError, match="build"):
        build_loss("ofd")(students, teachers)
    loss = _built(students, teachers)
    with pytest.raises(DistillError, match="teacher taps"):
        loss(students, teachers[:1])
    with pytest.raises(DistillError, match="margins"):
        loss.set_margins([torch.zeros(12)])
    with pytest.raises(ValueError, match="feature maps"):
        loss(torch.randn(2, 6), torch.randn(2, 12))


def test_cnn_relu_input_tap_is_pre_relu():
    """The shipped recipe taps '<relu>:in' on the cnn, whose ReLUs are in place: the tap must still hold
    the pre-activation (FeatureTaps copies it before the module runs)."""
    from distill.models import build_model
    from distill.taps import FeatureTaps

    torch.manual_seed(0)
    model = build_model("cnn", num_classes=10, in_channels=1, channels=[4, 8]).eval()
    with FeatureTaps(model, ["features.1.2:in"]) as taps:
        model(torch.randn(4, 1, 16, 16))
    assert (taps["features.1.2:in"] < 0).any()
