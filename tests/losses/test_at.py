"""AT (Zagoruyko & Komodakis 2017) against RepDistiller's ``distiller_zoo/AT.py`` (a copy of the authors'
``at_loss``, also mdistiller's ``distillers/AT.py``), transcribed below, plus the properties that make
attention transfer work across widths: invariance to per-sample feature scale and to channel order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.losses import build_loss
from distill.losses.at import attention_map


# ---- reference: RepDistiller distiller_zoo/AT.py (Attention), verbatim up to names
def _ref_at(f, p):
    return F.normalize(f.pow(p).mean(1).view(f.size(0), -1))


def _ref_at_loss(f_s, f_t, p):
    s_H, t_H = f_s.shape[2], f_t.shape[2]
    if s_H > t_H:
        f_s = F.adaptive_avg_pool2d(f_s, (t_H, t_H))
    elif s_H < t_H:
        f_t = F.adaptive_avg_pool2d(f_t, (s_H, s_H))
    return (_ref_at(f_s, p) - _ref_at(f_t, p)).pow(2).mean()


def _ref_attention(g_s, g_t, p=2):
    return sum(_ref_at_loss(f_s, f_t, p) for f_s, f_t in zip(g_s, g_t, strict=True))


def _maps(seed=0):
    g = torch.Generator().manual_seed(seed)
    student = [torch.randn(6, 4, 16, 16, generator=g), torch.randn(6, 8, 8, 8, generator=g)]
    teacher = [torch.randn(6, 16, 8, 8, generator=g), torch.randn(6, 32, 8, 8, generator=g)]
    return student, teacher


def test_parity_with_repdistiller_multilevel_and_spatial_mismatch():
    student, teacher = _maps()  # level 0: student 16x16 vs teacher 8x8 -> pooled
    ours = build_loss("at")(student, teacher)
    torch.testing.assert_close(ours, _ref_attention(student, teacher), rtol=1e-5, atol=1e-7)
    # the teacher side is the larger one too
    ours = build_loss("at")(teacher[0], student[0])
    torch.testing.assert_close(ours, _ref_attention([teacher[0]], [student[0]]))


@pytest.mark.parametrize("p", [1.0, 3.0, 4.0])
def test_parity_for_other_p_on_post_relu_features(p):
    """The paper's |f|^p and the code's f^p agree on post-ReLU features (and for even p)."""
    student, teacher = _maps(1)
    student = [s.relu() for s in student]
    teacher = [t.relu() for t in teacher]
    ours = build_loss("at", p=p)(student, teacher)
    torch.testing.assert_close(ours, _ref_attention(student, teacher, p), rtol=1e-5, atol=1e-7)


def test_invariant_to_per_sample_scale_and_channel_order():
    student, teacher = _maps(2)
    loss = build_loss("at")
    base = loss(student[1], teacher[1])
    scale = torch.rand(6, 1, 1, 1) * 10 + 0.1  # a different positive scale per sample
    perm = torch.randperm(student[1].shape[1])
    torch.testing.assert_close(loss(student[1] * scale, teacher[1]), base)
    torch.testing.assert_close(loss(student[1][:, perm], teacher[1] * 7.0), base)


def test_attention_map_is_unit_norm_and_mean_of_powers():
    f = torch.randn(3, 5, 4, 4)
    q = attention_map(f, 2.0)
    assert q.shape == (3, 16)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(3))
    raw = f.pow(2).mean(1).flatten(1)
    torch.testing.assert_close(q, raw / raw.norm(dim=1, keepdim=True))


def test_teacher_gets_no_gradient_and_student_does():
    student, teacher = _maps(3)
    s = [x.requires_grad_() for x in student]
    t = [x.requires_grad_() for x in teacher]
    build_loss("at")(s, t).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)


@pytest.mark.parametrize(
    "student, teacher, match",
    [
        ([torch.randn(2, 3, 4, 4)] * 2, [torch.randn(2, 3, 4, 4)], "2 student and 1 teacher"),
        (torch.randn(2, 3), torch.randn(2, 3), r"\(B, C, H, W\)"),
    ],
)
def test_bad_inputs_one_line_errors(student, teacher, match):
    with pytest.raises(ValueError, match=match) as excinfo:
        build_loss("at")(student, teacher)
    assert "\n" not in str(excinfo.value)


def test_bad_option():
    with pytest.raises(ValueError, match="p must be > 0, got 0"):
        build_loss("at", p=0)
