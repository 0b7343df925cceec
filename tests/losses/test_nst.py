"""NST (Huang & Wang 2017) against RepDistiller's ``distiller_zoo/NST.py`` (``NSTLoss``; mdistiller's
``nst_loss`` is the same), transcribed below, plus what makes it an MMD: it compares *distributions* of
channel patterns, so channel order, per-channel scale and duplicated channels do not matter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.losses import build_loss


# ---- reference: RepDistiller distiller_zoo/NST.py (NSTLoss), verbatim up to names
def _ref_poly_kernel(a, b):
    a = a.unsqueeze(1)
    b = b.unsqueeze(2)
    return (a * b).sum(-1).pow(2)


def _ref_nst_loss(f_s, f_t):
    s_H, t_H = f_s.shape[2], f_t.shape[2]
    if s_H > t_H:
        f_s = F.adaptive_avg_pool2d(f_s, (t_H, t_H))
    elif s_H < t_H:
        f_t = F.adaptive_avg_pool2d(f_t, (s_H, s_H))
    f_s = f_s.view(f_s.shape[0], f_s.shape[1], -1)
    f_s = F.normalize(f_s, dim=2)
    f_t = f_t.view(f_t.shape[0], f_t.shape[1], -1)
    f_t = F.normalize(f_t, dim=2)
    return (
        _ref_poly_kernel(f_t, f_t).mean().detach()
        + _ref_poly_kernel(f_s, f_s).mean()
        - 2 * _ref_poly_kernel(f_s, f_t).mean()
    )


def _ref_nst(g_s, g_t):
    return sum(_ref_nst_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t, strict=True))


def _maps(seed=0):
    g = torch.Generator().manual_seed(seed)
    student = [torch.randn(4, 6, 8, 8, generator=g), torch.randn(4, 8, 4, 4, generator=g)]
    teacher = [torch.randn(4, 12, 4, 4, generator=g), torch.randn(4, 24, 4, 4, generator=g)]
    return student, teacher


def test_parity_with_repdistiller_multilevel_and_spatial_mismatch():
    student, teacher = _maps()
    s1 = [x.clone().requires_grad_() for x in student]
    s2 = [x.clone().requires_grad_() for x in student]
    ours, ref = build_loss("nst")(s1, teacher), _ref_nst(s2, teacher)
    torch.testing.assert_close(ours, ref)
    ours.backward(), ref.backward()
    for a, b in zip(s1, s2, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_parity_on_small_wide_maps():
    """Small maps with many channels take the (N, N) Gram-matrix route; same values as the reference."""
    g = torch.Generator().manual_seed(5)
    student = torch.randn(4, 32, 3, 3, generator=g).requires_grad_()
    teacher = torch.randn(4, 256, 3, 3, generator=g)
    ref_input = student.detach().clone().requires_grad_()
    ours, ref = build_loss("nst")(student, teacher), _ref_nst([ref_input], [teacher])
    torch.testing.assert_close(ours, ref)
    ours.backward(), ref.backward()
    torch.testing.assert_close(student.grad, ref_input.grad)
    assert float(build_loss("nst")(teacher, teacher)) == 0.0


def test_linear_kernel_option_is_the_squared_distance_of_mean_patterns():
    """With d = 1, c = 0 the MMD is ||mean_j s_j - mean_i t_i||^2 (per sample), the usual identity."""
    student, teacher = _maps(1)
    s = F.normalize(student[1].flatten(2), dim=2).mean(1)
    t = F.normalize(teacher[1].flatten(2), dim=2).mean(1)
    expected = (s - t).pow(2).sum(1).mean()
    torch.testing.assert_close(build_loss("nst", degree=1)(student[1], teacher[1]), expected)


def test_compares_channel_distributions_not_channels():
    student, _ = _maps(2)
    s = student[1]
    loss = build_loss("nst")
    perm = torch.randperm(s.shape[1])
    scale = torch.rand(1, s.shape[1], 1, 1) * 5 + 0.1
    teacher = torch.cat([s, s[:, perm] * scale], dim=1)  # every pattern twice, shuffled, rescaled
    assert abs(float(loss(s, teacher))) < 1e-6
    assert float(loss(s, torch.randn_like(teacher))) > 1e-3


def test_teacher_gets_no_gradient():
    student, teacher = _maps(3)
    s, t = student[0].requires_grad_(), teacher[0].requires_grad_()
    build_loss("nst")(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


@pytest.mark.parametrize(
    "options, match",
    [({"degree": 0}, "degree must be an int >= 1"), ({"constant": -1}, "constant must be >= 0")],
)
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        build_loss("nst", **options)
