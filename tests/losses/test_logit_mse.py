"""logit_mse (Ba & Caruana 2014). References: ``mse_logit`` of Kim et al. 2021's official code
(jhoon-oh/kd_data, code/image_classfication/tools/losses.py: ``nn.MSELoss()(output, teacher_output)``;
Knowledge-Distillation-Zoo's ``Logits`` is the same ``F.mse_loss``) and Ba & Caruana's mimic objective ``1/(2N) sum_n ||z_s - z_t||^2`` (paper, section 2.2). Property: logit
matching is KD's high-temperature limit (Hinton et al. 2015, section 2.1), ``T^2 KL -> L / 2`` for
zero-mean logits; and unlike KD it sees a constant shift of the logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.losses import build_loss


def _logits(seed=0, b=16, c=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g), 3 * torch.randn(b, c, generator=g)


# ---- references
def _ref_kim(output, teacher_output):  # Kim et al., tools/losses.py, verbatim
    return nn.MSELoss()(output, teacher_output)


def _ref_ba_caruana(student, teacher):
    return (student - teacher).pow(2).sum(1).mean() / 2


def test_parity_with_kim_et_al_mse_logit():
    student, teacher = _logits()
    torch.testing.assert_close(
        build_loss("logit_mse")(student, teacher), _ref_kim(student, teacher)
    )


def test_batchmean_is_twice_ba_and_caruanas_objective():
    student, teacher = _logits(1)
    value = build_loss("logit_mse", reduction="batchmean")(student, teacher)
    torch.testing.assert_close(value, 2 * _ref_ba_caruana(student, teacher))
    torch.testing.assert_close(value, 10 * build_loss("logit_mse")(student, teacher))


def test_kd_tends_to_logit_matching_at_high_temperature():
    """Hinton et al. 2015, section 2.1: for zero-mean logits, T^2 KL(p_t || p_s) -> mean-MSE / 2."""
    student, teacher = (x.double() - x.double().mean(1, keepdim=True) for x in _logits(2))
    mse = build_loss("logit_mse")(student, teacher).double()
    for temperature, rtol in ((1e2, 5e-2), (1e3, 5e-3)):
        kl = F.kl_div(
            F.log_softmax(student / temperature, 1),
            F.log_softmax(teacher / temperature, 1),
            reduction="batchmean",
            log_target=True,
        )
        torch.testing.assert_close(kl * temperature**2, mse / 2, rtol=rtol, atol=0)


def test_sees_a_constant_shift_that_kd_ignores():
    student, teacher = _logits(3)
    loss, kd = build_loss("logit_mse"), build_loss("kd")
    torch.testing.assert_close(kd(student + 5.0, teacher), kd(student, teacher))
    torch.testing.assert_close(loss(teacher + 5.0, teacher), torch.tensor(25.0))


def test_gradient_goes_to_the_student_only_and_is_linear():
    student, teacher = _logits(4)
    s, t = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    build_loss("logit_mse")(s, t).backward()
    torch.testing.assert_close(s.grad, 2 * (student - teacher) / student.numel())
    assert t.grad is None


def test_sequences_and_shape_mismatch():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 7, 5, generator=g), torch.randn(2, 7, 5, generator=g)
    torch.testing.assert_close(build_loss("logit_mse")(s, t), F.mse_loss(s, t))
    with pytest.raises(ValueError, match="differ"):
        build_loss("logit_mse")(torch.zeros(4, 10), torch.zeros(4, 100))


def test_bad_options():
    with pytest.raises(ValueError, match="reduction must be one of"):
        build_loss("logit_mse", reduction="sum")
