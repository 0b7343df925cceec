"""Token-level LM divergences (forward/reverse KL, generalized JSD, symmetric KL, skew KL, skew reverse
KL, TVD): hand-computed values, math properties, the reduction over valid tokens, numerics (bf16 in,
-inf logits, fully masked batches) and parity with the reference implementations.

References:
* TRL ``GKDTrainer.generalized_jsd_loss`` (``trl/experimental/gkd/gkd_trainer.py``), compared live when
  ``trl`` is installed.
* DistiLLM ``distillm/losses.py`` (https://github.com/jongwooko/distillm, commit
  17c0f98bc263b1861a02d5df578c84aea652ee65): ``skewed_forward_kl``, ``skewed_reverse_kl``,
  ``tv_distance``, transcribed below (they do not install) with their values frozen.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses import build_loss
from distill.losses.forward_kl import forward_kl
from distill.losses.generalized_jsd import generalized_jsd
from distill.losses.reverse_kl import reverse_kl
from distill.losses.skew_kl import skew_kl
from distill.losses.skew_reverse_kl import skew_reverse_kl
from distill.losses.symmetric_kl import symmetric_kl
from distill.losses.tvd import tvd

NAMES = [
    "forward_kl",
    "reverse_kl",
    "generalized_jsd",
    "symmetric_kl",
    "skew_kl",
    "skew_reverse_kl",
    "tvd",
]


def _inputs(seed: int = 0, b: int = 3, t: int = 5, v: int = 11):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, t, v, generator=g)
    te = 2 * torch.randn(b, t, v, generator=g)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, 3:] = -100
    labels[2, :2] = -100
    return s, te, labels


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def test_hand_computed_two_token_case():
    """p_T = (0.5, 0.5), p_S = (0.8, 0.2) at one valid token (the other ignored): the textbook values."""
    student = torch.log(torch.tensor([[[0.8, 0.2], [0.3, 0.7]]]))
    teacher = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    labels = torch.tensor([[0, -100]])
    pt, ps = [0.5, 0.5], [0.8, 0.2]
    m = [0.5 * a + 0.5 * b for a, b in zip(pt, ps, strict=True)]
    skew = [0.1 * a + 0.9 * b for a, b in zip(pt, ps, strict=True)]
    skew_r = [0.9 * a + 0.1 * b for a, b in zip(pt, ps, strict=True)]
    expected = {
        "forward_kl": _kl(pt, ps),
        "reverse_kl": _kl(ps, pt),
        "generalized_jsd": 0.5 * _kl(pt, m) + 0.5 * _kl(ps, m),
        "symmetric_kl": 0.5 * _kl(pt, ps) + 0.5 * _kl(ps, pt),
        "skew_kl": _kl(pt, skew),
        "skew_reverse_kl": _kl(ps, skew_r),
        "tvd": 0.3,
    }
    # by hand: KL(p_T || p_S) = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2) = 0.5 ln(25/16) = ln(5/4)
    assert expected["forward_kl"] == pytest.approx(math.log(5 / 4), abs=1e-12)
    for name, value in expected.items():
        got = build_loss(name)(student, teacher, labels)
        assert float(got) == pytest.approx(value, rel=1e-5, abs=1e-7), name


def test_beta_limits_are_forward_and_reverse_kl():
    s, t, labels = _inputs()
    torch.testing.assert_close(generalized_jsd(s, t, labels, beta=0.0), forward_kl(s, t, labels))
    torch.testing.assert_close(generalized_jsd(s, t, labels, beta=1.0), reverse_kl(s, t, labels))
    torch.testing.assert_close(symmetric_kl(s, t, labels, ratio=1.0), forward_kl(s, t, labels))
    torch.testing.assert_close(symmetric_kl(s, t, labels, ratio=0.0), reverse_kl(s, t, labels))
    torch.testing.assert_close(skew_kl(s, t, labels, alpha=0.0), forward_kl(s, t, labels))
    torch.testing.assert_close(skew_reverse_kl(s, t, labels, alpha=0.0), reverse_kl(s, t, labels))


def test_jsd_is_symmetric_at_half_and_mixes_in_probability_space():
    s, t, labels = _inputs(1)
    torch.testing.assert_close(
        generalized_jsd(s, t, labels, 0.5), generalized_jsd(t, s, labels, 0.5)
    )
    # JSD(beta) with the mixture swapped equals JSD(1 - beta) with the roles swapped
    torch.testing.assert_close(
        generalized_jsd(s, t, labels, 0.2), generalized_jsd(t, s, labels, 0.8)
    )
    # bounded by log 2 (only true for the probability-space mixture)
    assert float(generalized_jsd(100 * s, 100 * t, labels, 0.5)) <= math.log(2) + 1e-6
    # the log-space mixture (TRL's old bug) gives another value
    sl, tl = F.log_softmax(s, -1), F.log_softmax(t, -1)
    wrong_m = 0.5 * sl + 0.5 * tl
    wrong = 0.5 * (tl.exp() * (tl - wrong_m)).sum(-1) + 0.5 * (sl.exp() * (sl - wrong_m)).sum(-1)
    assert abs(float(wrong[labels != -100].mean() - generalized_jsd(s, t, labels, 0.5))) > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_temperature_divides_the_logits_without_t2(name):
    s, t, labels = _inputs(2)
    loss_t = build_loss(name, temperature=2.0)(s, t, labels)
    loss_1 = build_loss(name)(s / 2, t / 2, labels)
    torch.testing.assert_close(loss_t, loss_1)


@pytest.mark.parametrize("name", NAMES)
def test_mean_over_valid_tokens_only(name):
    """Ignored positions change nothing (even NaN there), and the value is the per-token mean."""
    s, t, labels = _inputs(3)
    loss = build_loss(name)
    clean = loss(s, t, labels)
    s2, t2 = s.clone(), t.clone()
    s2[labels == -100] = float("nan")
    t2[labels == -100] = 1e4
    s2.requires_grad_(True)
    noisy = loss(s2, t2, labels)
    torch.testing.assert_close(noisy, clean)
    noisy.backward()
    assert torch.isfinite(s2.grad).all() and not s2.grad[labels == -100].any()
    valid = labels != -100
    per_token = torch.stack(
        [loss(s[valid][i : i + 1], t[valid][i : i + 1]) for i in range(int(valid.sum()))]
    )
    torch.testing.assert_close(clean, per_token.mean())


@pytest.mark.parametrize("name", NAMES)
def test_fully_masked_batch_is_zero_with_zero_gradients(name):
    s, t, _ = _inputs(4)
    s.requires_grad_(True)
    value = build_loss(name)(s, t, torch.full(s.shape[:2], -100))
    assert value.item() == 0.0
    value.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and not s.grad.any()


@pytest.mark.parametrize("name", NAMES)
def test_bf16_inputs_are_computed_in_float32(name):
    s, t, labels = _inputs(5)
    sb, tb = s.bfloat16(), t.bfloat16()
    value = build_loss(name)(sb, tb, labels)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, build_loss(name)(sb.float(), tb.float(), labels))


@pytest.mark.parametrize("name", NAMES)
def test_minus_inf_logits_are_masked_entries_not_nan(name):
    """Vocabulary entries at -inf in both models (masked tokens) are probability 0: the value equals the
    loss over the other entries, and gradients stay finite."""
    s, t, labels = _inputs(6)
    labels = labels.clamp(min=-100, max=7)
    s_inf, t_inf = s.clone(), t.clone()
    s_inf[..., 8:] = float("-inf")
    t_inf[..., 8:] = float("-inf")
    s_inf.requires_grad_(True)
    value = build_loss(name)(s_inf, t_inf, labels)
    assert torch.isfinite(value)
    torch.testing.assert_close(value, build_loss(name)(s[..., :8], t[..., :8], labels))
    value.backward()
    assert torch.isfinite(s_inf.grad).all()
    # the teacher alone masking entries the student keeps: finite where the divergence is (the forward
    # direction, mixtures, TVD); KL(p_S || p_T) is truly infinite there, and never NaN
    t_only = t.clone()
    t_only[..., 9:] = float("-inf")
    value = build_loss(name)(s, t_only, labels)
    if name in ("reverse_kl", "symmetric_kl"):
        assert not torch.isnan(value) and value > 1e30
    else:
        assert torch.isfinite(value)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_student_only(name):
    s, t, labels = _inputs(7)
    s.requires_grad_(True)
    t.requires_grad_(True)
    build_loss(name)(s, t, labels).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None


def test_bad_options_and_shapes_are_one_line_errors():
    with pytest.raises(ValueError, match="beta must be in"):
        build_loss("generalized_jsd", beta=1.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        build_loss("skew_kl", alpha=-0.1)
    s, t, labels = _inputs()
    with pytest.raises(DistillError, match="labels have shape"):
        forward_kl(s, t, labels[:, :-1])
    with pytest.raises(DistillError, match="cover different positions"):
        forward_kl(s, t[:, :-1], labels)


# ------------------------------------------------------------------ parity: TRL (live)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_generalized_jsd_matches_trl_live(beta, temperature):
    gkd = pytest.importorskip(
        "trl.experimental.gkd", reason="trl is not installed (pip install trl)"
    )
    s, t, labels = _inputs(8, b=4, t=6, v=32)
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    ours = generalized_jsd(s1, t, labels, beta=beta, temperature=temperature)
    theirs = gkd.GKDTrainer.generalized_jsd_loss(s2, t, labels, beta=beta, temperature=temperature)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ parity: DistiLLM (transcribed, frozen)


def _distillm_mask_mean(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    mask = (labels != -100).int()
    return torch.sum(x * mask.view(-1), dim=0) / torch.sum(mask.view(-1), dim=0)


def distillm_skewed_forward_kl(logits, teacher_logits, labels, lam=0.1):
    teacher_probs = F.softmax(teacher_logits, dim=-1, dtype=torch.float32)
    student_probs = F.softmax(logits, dim=-1, dtype=torch.float32)
    mixed_probs = lam * teacher_probs + (1 - lam) * student_probs
    mixed_logprobs = torch.log(mixed_probs)
    inf_mask = torch.isinf(logits) | torch.isinf(teacher_logits)
    prod_probs = torch.masked_fill(teacher_probs * mixed_logprobs, inf_mask, 0)
    x = torch.sum(prod_probs, dim=-1).view(-1)
    return -_distillm_mask_mean(x, labels)


def distillm_skewed_reverse_kl(logits, teacher_logits, labels, lam=0.1):
    teacher_probs = F.softmax(teacher_logits, dim=-1, dtype=torch.float32)
    student_probs = F.softmax(logits, dim=-1, dtype=torch.float32)
    mixed_probs = (1 - lam) * teacher_probs + lam * student_probs
    student_logprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
    mixed_logprobs = torch.log(mixed_probs)
    inf_mask = torch.isinf(logits) | torch.isinf(teacher_logits)
    prod_probs = torch.masked_fill(student_probs * mixed_logprobs, inf_mask, 0)
    prod_probs -= torch.masked_fill(student_probs * student_logprobs, inf_mask, 0)
    x = torch.sum(prod_probs, dim=-1).view(-1)
    return -_distillm_mask_mean(x, labels)


def distillm_tv_distance(logits, teacher_logits, labels):
    teacher_probs = F.softmax(teacher_logits, dim=-1, dtype=torch.float32)
    student_probs = F.softmax(logits, dim=-1, dtype=torch.float32)
    inf_mask = torch.isinf(logits) | torch.isinf(teacher_logits)
    prod_probs = 0.5 * torch.masked_fill(torch.abs(teacher_probs - student_probs), inf_mask, 0)
    x = torch.sum(prod_probs, dim=-1).view(-1)
    return _distillm_mask_mean(x, labels)


def _fixed_inputs():
    """Deterministic inputs that need no random generator (frozen values stay valid across torch)."""
    v = torch.arange(2 * 3 * 6, dtype=torch.float32).reshape(2, 3, 6)
    student = torch.sin(v) * 2.0
    teacher = torch.cos(0.7 * v) * 3.0
    labels = torch.tensor([[1, -100, 4], [0, 2, -100]])
    return student, teacher, labels


def _teacher_entropy(teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(teacher, -1)
    return -(logp.exp() * logp).sum(-1)[labels != -100].mean()


# values of the transcriptions above on _fixed_inputs(), alpha = 0.1 (torch 2.x, float32)
DISTILLM_FROZEN = {
    "skewed_forward_kl": 1.9653851985931396,
    "skewed_reverse_kl": 1.0471742153167725,
    "tv_distance": 0.598803699016571,
}


def test_skew_losses_match_distillm():
    s, t, labels = _fixed_inputs()
    for alpha in (0.1, 0.3):
        # DistiLLM's skewed forward KL is the cross-entropy: the divergence plus the teacher's entropy
        torch.testing.assert_close(
            skew_kl(s, t, labels, alpha=alpha) + _teacher_entropy(t, labels),
            distillm_skewed_forward_kl(s, t, labels, lam=alpha),
        )
        torch.testing.assert_close(
            skew_reverse_kl(s, t, labels, alpha=alpha),
            distillm_skewed_reverse_kl(s, t, labels, lam=alpha),
        )
    torch.testing.assert_close(tvd(s, t, labels), distillm_tv_distance(s, t, labels))
    # same gradients (the entropy term is constant in the student)
    a, b = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    skew_kl(a, t, labels).backward()
    distillm_skewed_forward_kl(b, t, labels).backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_distillm_frozen_values():
    s, t, labels = _fixed_inputs()
    got = {
        "skewed_forward_kl": float(distillm_skewed_forward_kl(s, t, labels)),
        "skewed_reverse_kl": float(distillm_skewed_reverse_kl(s, t, labels)),
        "tv_distance": float(distillm_tv_distance(s, t, labels)),
    }
    for key, value in got.items():
        assert value == pytest.approx(DISTILLM_FROZEN[key], rel=1e-5), key
    assert float(skew_reverse_kl(s, t, labels)) == pytest.approx(
        DISTILLM_FROZEN["skewed_reverse_kl"], rel=1e-5
    )
