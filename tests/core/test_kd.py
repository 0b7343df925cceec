"""Hinton KD loss and the FitNet hint loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import LOSSES, FitNetLoss, KDLoss, build_loss, fitnet_loss, kd_loss


def _softmax(row, T):
    exps = [math.exp(v / T) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def test_kd_hand_computed_2x3():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    T = 2.0
    kl_sum = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        p = _softmax(t_row, T)  # teacher distribution
        q = _softmax(s_row, T)  # student distribution
        kl_sum += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    expected = T**2 * kl_sum / 2  # batchmean over 2 samples

    got = kd_loss(torch.tensor(student), torch.tensor(teacher), temperature=T)
    assert got.shape == ()
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert KDLoss(temperature=T)(
        torch.tensor(student), torch.tensor(teacher)
    ).item() == pytest.approx(expected, rel=1e-5)


def test_kd_is_not_symmetric_kl_teacher_to_student():
    # KL(p_t || q_s) != KL(q_s || p_t) in general: check the loss uses the teacher as the target
    s = torch.tensor([[3.0, 0.0, 0.0]])
    t = torch.tensor([[0.0, 1.0, 0.0]])
    p, q = t.softmax(-1), s.softmax(-1)
    forward_kl = (p * (p.log() - q.log())).sum()
    reverse_kl = (q * (q.log() - p.log())).sum()
    assert not torch.isclose(forward_kl, reverse_kl)
    torch.testing.assert_close(kd_loss(s, t, 1.0), forward_kl)


def test_kd_zero_when_equal():
    torch.manual_seed(0)
    z = torch.randn(8, 10) * 5
    assert kd_loss(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_nonnegative_on_random_logits():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        s = torch.randn(4, 7, generator=g) * 3
        t = torch.randn(4, 7, generator=g) * 3
        assert kd_loss(s, t, 3.0).item() >= -1e-6


def test_kd_equals_T2_times_kl_at_T():
    torch.manual_seed(2)
    s, t = torch.randn(5, 6), torch.randn(5, 6)
    for T in (1.0, 2.0, 4.0, 8.0):
        p = F.softmax(t / T, -1)
        log_q = F.log_softmax(s / T, -1)
        kl = (p * (p.log() - log_q)).sum(-1).mean()
        torch.testing.assert_close(kd_loss(s, t, T), T**2 * kl)


def test_kd_high_temperature_limit_is_centered_logit_mse():
    # For T -> inf, T^2 KL -> sum_c (z_s - z_t - mean)^2 / (2C), averaged over the batch (Hinton sec. 2.1)
    torch.manual_seed(3)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    d = (s - s.mean(-1, keepdim=True)) - (t - t.mean(-1, keepdim=True))
    limit = (d**2).sum(-1).mean() / (2 * s.shape[-1])
    # the loss computes in float32, so keep z/T ~ 1e-2: the O(z/T) correction stays within 2 %
    assert kd_loss(s, t, 100.0).item() == pytest.approx(limit.item(), rel=2e-2)
    # without the T^2 factor the loss would vanish like 1/T^2
    assert kd_loss(s, t, 100.0).item() == pytest.approx(kd_loss(s, t, 50.0).item(), rel=5e-2)


def test_kd_invariant_to_per_row_shift():
    torch.manual_seed(4)
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    shift_s = torch.tensor([[1.0], [-7.0], [100.0]])
    shift_t = torch.tensor([[3.0], [0.5], [-50.0]])
    torch.testing.assert_close(
        kd_loss(s + shift_s, t + shift_t, 4.0), kd_loss(s, t, 4.0), rtol=1e-4, atol=1e-5
    )


def test_kd_3d_equals_flattened():
    torch.manual_seed(5)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    torch.testing.assert_close(kd_loss(s, t, 2.0), kd_loss(s.reshape(6, 5), t.reshape(6, 5), 2.0))


def test_kd_gradient_reaches_student_only():
    torch.manual_seed(6)
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    loss_module = KDLoss(4.0)
    assert list(loss_module.parameters()) == []
    loss_module(s, t.detach()).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_kd_gradient_matches_formula():
    # d/dz_s [T^2 KL] = T (q - p) / B
    torch.manual_seed(7)
    T, B = 3.0, 4
    s = torch.randn(B, 5, requires_grad=True)
    t = torch.randn(B, 5)
    kd_loss(s, t, T).backward()
    expected = T * (F.softmax(s.detach() / T, -1) - F.softmax(t / T, -1)) / B
    torch.testing.assert_close(s.grad, expected)


@pytest.mark.parametrize("T", [0, 0.0, -1.0])
def test_kd_rejects_nonpositive_temperature(T):
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature=T)


def test_kd_registered_and_buildable():
    assert LOSSES.get("kd") is KDLoss
    loss = build_loss("kd", temperature=2.0)
    assert isinstance(loss, KDLoss) and loss.temperature == 2.0
    assert loss.extra_inputs == ()


def test_fitnet_equals_mse():
    torch.manual_seed(8)
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(fitnet_loss(a, b), F.mse_loss(a, b))
    torch.testing.assert_close(FitNetLoss()(a, b), ((a - b) ** 2).mean())
    assert LOSSES.get("fitnet") is FitNetLoss


def test_fitnet_shape_mismatch():
    with pytest.raises(ValueError, match="projector"):
        fitnet_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4))
    with pytest.raises(ValueError):
        FitNetLoss()(torch.zeros(2, 8), torch.zeros(2, 3, 4))
