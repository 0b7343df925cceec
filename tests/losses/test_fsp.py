"""FSP (Yim et al. 2017) against RepDistiller's ``distiller_zoo/FSP.py`` (``FSP.compute_fsp`` and
``compute_loss``, summed over pairs as its ``helper/pretrain.py`` does), transcribed below, plus the
property that defines an FSP matrix: it records how channels of two layers co-vary over positions, so
moving positions around (the same way in both layers) changes nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.losses import build_loss
from distill.losses.fsp import fsp_matrix


# ---- reference: RepDistiller distiller_zoo/FSP.py, verbatim up to names
def _ref_compute_fsp(g):
    fsp_list = []
    for i in range(len(g) - 1):
        bot, top = g[i], g[i + 1]
        b_H, t_H = bot.shape[2], top.shape[2]
        if b_H > t_H:
            bot = F.adaptive_avg_pool2d(bot, (t_H, t_H))
        elif b_H < t_H:
            top = F.adaptive_avg_pool2d(top, (b_H, b_H))
        bot = bot.unsqueeze(1)
        top = top.unsqueeze(2)
        bot = bot.view(bot.shape[0], bot.shape[1], bot.shape[2], -1)
        top = top.view(top.shape[0], top.shape[1], top.shape[2], -1)
        fsp_list.append((bot * top).mean(-1))
    return fsp_list


def _ref_fsp(g_s, g_t):
    s_fsp, t_fsp = _ref_compute_fsp(g_s), _ref_compute_fsp(g_t)
    return sum((s - t).pow(2).mean() for s, t in zip(s_fsp, t_fsp, strict=True))


def _maps(seed=0, student_channels=(4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    sizes = (8, 4, 4)
    student = [
        torch.randn(5, c, h, h, generator=g) for c, h in zip(student_channels, sizes, strict=True)
    ]
    teacher = [torch.randn(5, c, h, h, generator=g) for c, h in zip((4, 8, 8), sizes, strict=True)]
    return student, teacher


def test_parity_with_repdistiller():
    student, teacher = _maps()
    loss = build_loss("fsp")
    loss.build(student, teacher)
    torch.testing.assert_close(loss(student, teacher), _ref_fsp(student, teacher))
    a, b = student[0], student[1]
    torch.testing.assert_close(fsp_matrix(a, b), _ref_compute_fsp([a, b])[0])
    assert fsp_matrix(a, b).shape == (5, 8, 4)  # (B, C2, C1)


def test_fsp_matrix_ignores_where_only_how_channels_co_vary():
    student, teacher = _maps(1)
    a, b = student[1], student[2]  # both 4x4
    perm = torch.randperm(16)

    def shuffle(x):
        return x.flatten(2)[:, :, perm].reshape(x.shape)

    torch.testing.assert_close(fsp_matrix(shuffle(a), shuffle(b)), fsp_matrix(a, b))
    loss = build_loss("fsp")
    value = loss(student[1:], teacher[1:])
    torch.testing.assert_close(loss([shuffle(x) for x in student[1:]], teacher[1:]), value)


def test_different_channels_raise_in_build_unless_connector():
    student, teacher = _maps(2, student_channels=(2, 4, 4))
    with pytest.raises(ValueError, match=r"student channels \[2, 4, 4\] differ") as excinfo:
        build_loss("fsp").build(student, teacher)
    assert "\n" not in str(excinfo.value) and "connector: true" in str(excinfo.value)
    with pytest.raises(ValueError, match="channel counts must match"):
        build_loss("fsp")(student, teacher)  # unbuilt: the check at the matrices
    loss = build_loss("fsp", connector=True)
    with pytest.raises(RuntimeError, match="build"):
        loss(student, teacher)
    loss.build(student, teacher)
    s = [x.requires_grad_() for x in student]
    value = loss(s, teacher)
    value.backward()
    assert torch.isfinite(value)
    assert all(c[0].weight.grad is not None for c in loss.connectors)
    assert all(x.grad is not None for x in s)


@pytest.mark.parametrize(
    "student, teacher, match",
    [
        (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), "lists of feature maps"),
        ([torch.randn(2, 3, 4, 4)], [torch.randn(2, 3, 4, 4)], "two or more"),
    ],
)
def test_bad_inputs_one_line_errors(student, teacher, match):
    with pytest.raises(ValueError, match=match) as excinfo:
        build_loss("fsp")(student, teacher)
    assert "\n" not in str(excinfo.value)


def test_bad_option():
    with pytest.raises(ValueError, match="connector must be true or false"):
        build_loss("fsp", connector="yes")
