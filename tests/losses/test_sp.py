"""SP (Tung & Mori 2019) against RepDistiller's ``distiller_zoo/SP.py`` (``Similarity``, verified by the
paper's authors; mdistiller's ``sp_loss`` is the same), transcribed below, plus its invariances: only
the batch's similarity structure counts, so a rotation or a global rescaling of the feature space, or a
different width, leaves the loss unchanged."""

from __future__ import annotations

import pytest
import torch

from distill.losses import build_loss


# ---- reference: RepDistiller distiller_zoo/SP.py (Similarity.similarity_loss), verbatim up to names
def _ref_similarity_loss(f_s, f_t):
    bsz = f_s.shape[0]
    f_s = f_s.view(bsz, -1)
    f_t = f_t.view(bsz, -1)
    G_s = torch.mm(f_s, torch.t(f_s))
    G_s = torch.nn.functional.normalize(G_s)
    G_t = torch.mm(f_t, torch.t(f_t))
    G_t = torch.nn.functional.normalize(G_t)
    G_diff = G_t - G_s
    return (G_diff * G_diff).view(-1, 1).sum(0) / (bsz * bsz)


def _ref_sp(g_s, g_t):
    return sum(_ref_similarity_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t, strict=True)).squeeze(0)


def test_parity_with_repdistiller():
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(10, 8, 4, 4, generator=g), torch.randn(10, 16, generator=g)]
    teacher = [torch.randn(10, 32, 4, 4, generator=g), torch.randn(10, 64, generator=g)]
    loss = build_loss("sp")
    torch.testing.assert_close(loss(student, teacher), _ref_sp(student, teacher))
    torch.testing.assert_close(loss(student[0], teacher[0]), _ref_sp(student[:1], teacher[:1]))


def test_invariant_to_rotation_and_global_scale_of_the_feature_space():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(12, 20, generator=g), torch.randn(12, 50, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(20, 20, generator=g))
    loss = build_loss("sp")
    base = loss(student, teacher)
    torch.testing.assert_close(loss(3.5 * student @ rotation, teacher), base)
    # a teacher that is a rotated, wider copy of the student: the similarities agree, the loss is 0
    lift, _ = torch.linalg.qr(torch.randn(50, 20, generator=g))  # 50x20, orthonormal columns
    assert float(loss(student, 2.0 * student @ lift.t())) < 1e-10


def test_permuting_the_batch_permutes_the_matrices_only():
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(9, 6, 3, 3, generator=g), torch.randn(9, 12, 3, 3, generator=g)
    perm = torch.randperm(9, generator=g)
    loss = build_loss("sp")
    torch.testing.assert_close(loss(student[perm], teacher[perm]), loss(student, teacher))


def test_teacher_gets_no_gradient():
    s = torch.randn(5, 7, requires_grad=True)
    t = torch.randn(5, 9, requires_grad=True)
    build_loss("sp")(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_mismatched_levels_one_line_error():
    with pytest.raises(ValueError, match="2 student and 1 teacher") as excinfo:
        build_loss("sp")([torch.randn(2, 3)] * 2, [torch.randn(2, 3)])
    assert "\n" not in str(excinfo.value)
