"""RKD (Park et al. 2019) against RepDistiller's ``distiller_zoo/RKD.py`` (``RKDLoss``, the authors'
``RkdDistance`` + ``RKdAngle`` from lenscloth/RKD; mdistiller's ``rkd_loss`` is the same), transcribed
below, plus the invariances the paper argues for: translating, rotating or uniformly scaling an
embedding space changes neither distances (after mean normalisation) nor angles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.losses import build_loss


# ---- reference: RepDistiller distiller_zoo/RKD.py, verbatim up to names
def _ref_pdist(e, squared=False, eps=1e-12):
    e_square = e.pow(2).sum(dim=1)
    prod = e @ e.t()
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps)
    if not squared:
        res = res.sqrt()
    res = res.clone()
    res[range(len(e)), range(len(e))] = 0
    return res


def _ref_rkd(f_s, f_t, w_d=25, w_a=50):
    student = f_s.view(f_s.shape[0], -1)
    teacher = f_t.view(f_t.shape[0], -1)
    with torch.no_grad():
        t_d = _ref_pdist(teacher, squared=False)
        mean_td = t_d[t_d > 0].mean()
        t_d = t_d / mean_td
    d = _ref_pdist(student, squared=False)
    mean_d = d[d > 0].mean()
    d = d / mean_d
    loss_d = F.smooth_l1_loss(d, t_d)
    with torch.no_grad():
        td = teacher.unsqueeze(0) - teacher.unsqueeze(1)
        norm_td = F.normalize(td, p=2, dim=2)
        t_angle = torch.bmm(norm_td, norm_td.transpose(1, 2)).view(-1)
    sd = student.unsqueeze(0) - student.unsqueeze(1)
    norm_sd = F.normalize(sd, p=2, dim=2)
    s_angle = torch.bmm(norm_sd, norm_sd.transpose(1, 2)).view(-1)
    loss_a = F.smooth_l1_loss(s_angle, t_angle)
    return w_d * loss_d + w_a * loss_a


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(10, 16, generator=g), 3 * torch.randn(10, 32, generator=g)


def test_parity_with_repdistiller():
    student, teacher = _inputs()
    s1, s2 = student.clone().requires_grad_(), student.clone().requires_grad_()
    ours, ref = build_loss("rkd")(s1, teacher), _ref_rkd(s2, teacher)
    torch.testing.assert_close(ours, ref)
    ours.backward(), ref.backward()
    torch.testing.assert_close(s1.grad, s2.grad)


@pytest.mark.parametrize("w_d, w_a", [(1.0, 0.0), (0.0, 2.0), (25.0, 50.0)])
def test_parity_for_other_weights_and_maps(w_d, w_a):
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(6, 4, 2, 2, generator=g), torch.randn(6, 8, 3, 3, generator=g)
    ours = build_loss("rkd", distance_weight=w_d, angle_weight=w_a)(student, teacher)
    torch.testing.assert_close(ours, _ref_rkd(student, teacher, w_d, w_a))


def test_angle_chunks_are_repdistiller_angle_losses_of_the_groups():
    """``angle_chunk = k``: the angle term of each group of k samples, averaged over all triplets."""
    g = torch.Generator().manual_seed(6)
    student, teacher = torch.randn(12, 8, generator=g), torch.randn(12, 20, generator=g)
    loss = build_loss("rkd", distance_weight=0.0, angle_weight=1.0, angle_chunk=4)
    groups = [
        _ref_rkd(s, t, 0.0, 1.0) for s, t in zip(student.split(4), teacher.split(4), strict=True)
    ]
    torch.testing.assert_close(loss(student, teacher), torch.stack(groups).mean())
    whole = build_loss("rkd", angle_chunk=12)(student, teacher)  # a chunk as big as the batch
    torch.testing.assert_close(whole, _ref_rkd(student, teacher))
    uneven = build_loss("rkd", distance_weight=0.0, angle_weight=1.0, angle_chunk=5)
    parts = [
        _ref_rkd(s, t, 0.0, 1.0) * len(s) ** 3
        for s, t in zip(student.split(5), teacher.split(5), strict=True)
    ]
    torch.testing.assert_close(uneven(student, teacher), sum(parts) / (5**3 + 5**3 + 2**3))


def test_invariant_to_translation_rotation_and_scale_of_the_student_space():
    student, teacher = _inputs(2)
    g = torch.Generator().manual_seed(3)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    shift = torch.randn(1, 16, generator=g) * 10
    loss = build_loss("rkd")
    torch.testing.assert_close(
        loss(0.25 * student @ rotation + shift, teacher),
        loss(student, teacher),
        rtol=1e-4,
        atol=1e-5,
    )
    # a moved, rotated, rescaled copy of the teacher (in a wider space) has the teacher's relations
    lift, _ = torch.linalg.qr(torch.randn(40, 32, generator=g))  # orthonormal columns
    copy = 5.0 * teacher @ lift.t() - 2.0
    assert float(loss(copy, teacher)) < 1e-6


def test_teacher_gets_no_gradient():
    student, teacher = _inputs(4)
    s, t = student.requires_grad_(), teacher.requires_grad_()
    build_loss("rkd")(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


@pytest.mark.parametrize(
    "options, match",
    [
        ({"distance_weight": -1}, "distance_weight must be >= 0, got -1"),
        ({"distance_weight": 0, "angle_weight": 0}, "both 0"),
        ({"eps": 0}, "eps must be > 0"),
        ({"angle_chunk": -1}, "angle_chunk must be an int >= 0"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        build_loss("rkd", **options)
