"""PKT (Passalis & Tefas 2018) against RepDistiller's ``distiller_zoo/PKT.py`` (the authors'
``cosine_similarity_loss`` from passalis/probabilistic_kt; mdistiller's ``pkt_loss`` is the same),
transcribed below, plus its properties: cosine kernels ignore each sample's feature scale and the
space's orientation, and the mean over B^2 entries makes the value scale like 1/B."""

from __future__ import annotations

import pytest
import torch

from distill.losses import build_loss
from distill.losses.pkt import neighbour_distribution


# ---- reference: RepDistiller distiller_zoo/PKT.py (PKT.cosine_similarity_loss), verbatim up to names
def _ref_pkt(output_net, target_net, eps=0.0000001):
    output_net_norm = torch.sqrt(torch.sum(output_net**2, dim=1, keepdim=True))
    output_net = output_net / (output_net_norm + eps)
    output_net[output_net != output_net] = 0
    target_net_norm = torch.sqrt(torch.sum(target_net**2, dim=1, keepdim=True))
    target_net = target_net / (target_net_norm + eps)
    target_net[target_net != target_net] = 0
    model_similarity = torch.mm(output_net, output_net.transpose(0, 1))
    target_similarity = torch.mm(target_net, target_net.transpose(0, 1))
    model_similarity = (model_similarity + 1.0) / 2.0
    target_similarity = (target_similarity + 1.0) / 2.0
    model_similarity = model_similarity / torch.sum(model_similarity, dim=1, keepdim=True)
    target_similarity = target_similarity / torch.sum(target_similarity, dim=1, keepdim=True)
    return torch.mean(
        target_similarity * torch.log((target_similarity + eps) / (model_similarity + eps))
    )


def _inputs(seed=0, b=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 16, generator=g), torch.randn(b, 48, generator=g)


def test_parity_with_repdistiller():
    student, teacher = _inputs()
    s1, s2 = student.clone().requires_grad_(), student.clone().requires_grad_()
    ours, ref = build_loss("pkt")(s1, teacher), _ref_pkt(s2 * 1.0, teacher.clone())
    torch.testing.assert_close(ours, ref)
    ours.backward(), ref.backward()
    torch.testing.assert_close(s1.grad, s2.grad)


def test_rows_are_distributions_and_scale_and_rotation_do_not_matter():
    student, teacher = _inputs(1)
    p = neighbour_distribution(student)
    torch.testing.assert_close(p.sum(1), torch.ones(10))
    assert (p >= 0).all()
    g = torch.Generator().manual_seed(2)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    scale = torch.rand(10, 1, generator=g) * 4 + 0.1
    loss = build_loss("pkt")
    torch.testing.assert_close(loss(scale * student @ rotation, teacher), loss(student, teacher))


def test_value_scales_like_one_over_batch_size_as_documented():
    """The authors' mean over B^2 entries: repeating the batch halves the value (up to eps)."""
    student, teacher = _inputs(3)
    loss = build_loss("pkt")
    once = loss(student, teacher)
    twice = loss(torch.cat([student, student]), torch.cat([teacher, teacher]))
    torch.testing.assert_close(twice, once / 2, rtol=1e-4, atol=1e-7)


def test_all_zero_features_give_finite_gradients():
    """The authors' code divides by the norm; a dead (all-zero) student row stays finite here."""
    student, teacher = _inputs(4)
    s = student.clone()
    s[0] = 0
    s.requires_grad_()
    value = build_loss("pkt")(s, teacher)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()


def test_teacher_gets_no_gradient():
    student, teacher = _inputs(5)
    s, t = student.requires_grad_(), teacher.requires_grad_()
    build_loss("pkt")(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_bad_option():
    with pytest.raises(ValueError, match="eps must be in"):
        build_loss("pkt", eps=0.5)
