"""Hand-computed cases, one or more per registered loss, written from the papers' equations.

Each case feeds a tiny input (batch 1-3, 2-4 classes, 1x1 to 4x4 maps) chosen so that the paper's
equation can be evaluated by hand; the expected value is computed here with plain Python ``math`` on
scalars (never with the torch functions the implementation uses), with the equation in a comment.
Losses with trainable parts built in ``build()`` get those parts set to known values first (identity
convolutions, zero biases, BatchNorm in eval mode with ``eps = 0``, fixed variances or margins), so the
loss reduces to the paper's parameter-free equation. Random methods get their randomness fixed (a given
``contrast_index`` for CRD, a given mask for MGD).

The file also holds limiting cases that a paper states and the method's own test file does not already
cover (DKD on two classes, MLKD's instance level as KD, NKD as cross-entropy, MGD with everything
masked, the OFD margin of a standard normal, WSLD's weight at its two extremes).

``test_every_registered_loss_has_a_hand_computed_case`` loops over the registry: a new loss fails it
until a case for it is added here (decorate the test with ``@case("name")``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

import distill.losses.mgd as mgd_module
from distill.losses import LOSSES, build_loss
from distill.losses.dkd import dkd_loss
from distill.losses.kd import kd_loss
from distill.losses.logit_mse import logit_mse_loss
from distill.losses.mlkd import mlkd_loss
from distill.losses.nkd import nkd_loss
from distill.losses.ofd import ofd_margin
from distill.losses.reviewkd import hcl_loss

LN2, LN3 = math.log(2.0), math.log(3.0)

# name -> the test functions holding a hand-computed case for that loss
CASES: dict[str, list[str]] = {}


def case(name: str) -> Callable:
    """Mark a test as a hand-computed case of loss ``name`` (checked against the registry below)."""

    def decorator(fn: Callable) -> Callable:
        CASES.setdefault(name, []).append(fn.__name__)
        return fn

    return decorator


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_registered_loss_has_a_hand_computed_case(name):
    assert name in CASES, (
        f"loss {name!r} has no hand-computed case in tests/losses/test_hand_computed.py: add a test "
        f"decorated with @case({name!r}) whose expected value is worked out from the paper's equations "
        "with plain Python math on a tiny input"
    )


def test_cases_name_registered_losses():
    stale = sorted(set(CASES) - set(LOSSES.names()))
    assert not stale, f"hand-computed cases for losses that are not registered: {stale}"


# ----------------------------------------------------------------------------- scalar helpers
def softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) = sum_i p_i log(p_i / q_i)."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    den = math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((y - mb) ** 2 for y in b))
    return num / den


def huber(x: float) -> float:
    """Smooth L1 with delta 1 (RKD's loss on distances and angles)."""
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def check(got: torch.Tensor, expected: float, rel: float = 1e-5, abs_: float = 1e-7) -> None:
    assert got.shape == ()
    assert float(got.detach()) == pytest.approx(expected, rel=rel, abs=abs_)


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def identity_(conv: nn.Module, scale: float = 1.0) -> None:
    """Set a Conv2d / ConvTranspose2d (square channels, odd kernel) to ``scale`` times the identity."""
    with torch.no_grad():
        conv.weight.zero_()
        channels = conv.weight.shape[0]
        centre = conv.weight.shape[-1] // 2
        for c in range(channels):
            conv.weight[c, c, centre, centre] = scale
        if conv.bias is not None:
            conv.bias.zero_()


def identity_bn_(bn: nn.BatchNorm2d) -> None:
    """BatchNorm as the identity: eval mode with running mean 0, variance 1, affine 1/0 and eps 0."""
    bn.eval()
    bn.eps = 0.0
    with torch.no_grad():
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.weight.fill_(1.0)
        bn.bias.zero_()


# ============================================================================= logit losses
@case("kd")
def test_kd_hand_computed():
    # L = T^2 * mean_b KL(softmax(z_t / T) || softmax(z_s / T))                  (Hinton et al., sec. 2)
    # T = 2, sample 1: z_t / T = [0, ln 3] -> p = [1/4, 3/4]; z_s = 0 -> q = [1/2, 1/2].
    # sample 2: identical logits, KL = 0. batchmean over 2 samples.
    temperature = 2.0
    student = t([0.0, 0.0], [1.0, -1.0])
    teacher = t([0.0, 2 * LN3], [1.0, -1.0])
    kl_1 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    expected = temperature**2 * (kl_1 + 0.0) / 2
    check(build_loss("kd", temperature=temperature)(student, teacher), expected)


@case("kd")
def test_kd_standardized_hand_computed():
    # Sun et al. 2024: Z(z) = (z - mean z) / std z before the softmax (std unbiased, as the authors'
    # code; the module documents this). Two classes: z = [a, b] has std |a - b| / sqrt(2), so
    # z_s = [0, 1] -> [-u, u], z_t = [5, 3] -> [u, -u] with u = 1/sqrt(2). At T = 1:
    # KL(softmax([u, -u]) || softmax([-u, u])) = sum_i p_i * (+-2u) = 2u (p_1 - p_2) = 2u tanh(u).
    u = 1 / math.sqrt(2)
    expected = 2 * u * math.tanh(u)
    got = build_loss("kd", temperature=1.0, standardize=True)(t([0.0, 1.0]), t([5.0, 3.0]))
    check(got, expected, rel=1e-5)


def _dkd_parts(teacher_logits, student_logits, label):
    """TCKD and NCKD of one sample at T = 1 (Zhao et al.)."""
    p_t, p_s = softmax(teacher_logits), softmax(student_logits)
    b_t, b_s = [p_t[label], 1 - p_t[label]], [p_s[label], 1 - p_s[label]]
    rest_t = [p for i, p in enumerate(p_t) if i != label]
    rest_s = [p for i, p in enumerate(p_s) if i != label]
    nckd = kl([p / sum(rest_t) for p in rest_t], [p / sum(rest_s) for p in rest_s])
    return kl(b_t, b_s), nckd, p_t[label]


@case("dkd")
def test_dkd_hand_computed():
    # L = T^2 * mean_b ( alpha * KL(b_t || b_s) + beta * KL(p~_t || p~_s) )    (Zhao et al.)
    # b = [p(y), 1 - p(y)], p~ = softmax over the non-target classes.
    # sample 1, y = 0: p_t = [1/2, 1/4, 1/4], p_s = [1/5, 1/5, 3/5]
    #   TCKD = 1/2 ln(5/2) + 1/2 ln(5/8),  NCKD = KL([1/2, 1/2] || [1/4, 3/4]) = 1/2 ln 2 + 1/2 ln(2/3)
    # sample 2, y = 2: p_t = [1/3, 1/3, 1/3], p_s = [1/2, 1/4, 1/4]
    #   TCKD = 1/3 ln(4/3) + 2/3 ln(8/9),  NCKD = KL([1/2, 1/2] || [2/3, 1/3]) = 1/2 ln(3/4) + 1/2 ln(3/2)
    # T = 2 with every logit doubled gives the same distributions and the factor T^2 = 4.
    tckd_1 = 0.5 * math.log(5 / 2) + 0.5 * math.log(5 / 8)
    nckd_1 = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    tckd_2 = math.log(4 / 3) / 3 + 2 / 3 * math.log(8 / 9)
    nckd_2 = 0.5 * math.log(3 / 4) + 0.5 * math.log(3 / 2)
    assert (tckd_1, nckd_1) == pytest.approx(_dkd_parts([LN2, 0, 0], [0, 0, LN3], 0)[:2])
    assert (tckd_2, nckd_2) == pytest.approx(_dkd_parts([0, 0, 0], [LN2, 0, 0], 2)[:2])
    teacher = t([LN2, 0.0, 0.0], [0.0, 0.0, 0.0])
    student = t([0.0, 0.0, LN3], [LN2, 0.0, 0.0])
    labels = torch.tensor([0, 2])
    alpha, beta = 1.0, 8.0
    expected = ((alpha * tckd_1 + beta * nckd_1) + (alpha * tckd_2 + beta * nckd_2)) / 2
    loss = build_loss("dkd", alpha=alpha, beta=beta, temperature=1.0)
    check(loss(student, teacher, labels), expected)
    loss2 = build_loss("dkd", alpha=alpha, beta=beta, temperature=2.0)
    check(loss2(2 * student, 2 * teacher, labels), 4 * expected)
    # alpha = beta = 1 against KD (Eq. 5: KD = TCKD + (1 - p_t(y)) NCKD): DKD(1, 1) - KD is the
    # NCKD that KD's teacher confidence suppresses, p_t(y) * NCKD, here 1/2 NCKD_1 + 1/3 NCKD_2 over 2.
    kd_hand = ((tckd_1 + (1 - 0.5) * nckd_1) + (tckd_2 + (1 - 1 / 3) * nckd_2)) / 2
    check(kd_loss(student, teacher, 1.0), kd_hand)
    both_one = dkd_loss(student, teacher, labels, 1.0, 1.0, 1.0)
    check(both_one - kd_loss(student, teacher, 1.0), (0.5 * nckd_1 + nckd_2 / 3) / 2, rel=1e-4)


@case("dkd")
def test_dkd_two_classes_has_no_non_target_part_and_is_alpha_times_kd():
    # Limiting case: with C = 2 the non-target "distribution" is a single class (p~ = [1]), NCKD = 0
    # whatever beta, and TCKD's binary distribution is the full distribution: DKD = alpha * KD.
    # z_t = [ln 3, 0] -> p_t = [3/4, 1/4]; z_s = 0 -> [1/2, 1/2]; y = 1: KD = 3/4 ln(3/2) + 1/4 ln(1/2).
    kd_value = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    student, teacher, labels = t([0.0, 0.0]), t([LN3, 0.0]), torch.tensor([1])
    for beta in (0.0, 8.0, 100.0):
        check(
            dkd_loss(student, teacher, labels, alpha=2.0, beta=beta, temperature=1.0), 2 * kd_value
        )
    check(kd_loss(student, teacher, 1.0), kd_value)


@case("nkd")
def test_nkd_hand_computed():
    # L = -T_y log S_y - gamma * lambda^2 * sum_{i != y} N(T^lambda)_i log N(S^lambda)_i   (Yang et al.)
    # y = 0, z_t = [ln 2, 0, 0] -> T = [1/2, 1/4, 1/4]; z_s = [0, 0, ln 3] -> S = [1/5, 1/5, 3/5].
    # target part: -1/2 ln(1/5) = 1/2 ln 5.
    # lambda = 1: N(T) = [1/2, 1/2], N(S) = [1/4, 3/4]; non-target CE = 1/2 ln 4 + 1/2 ln(4/3).
    # lambda = 2: N(S^2) = softmax([0, ln 3] / 2) = [1, sqrt 3] / (1 + sqrt 3).
    student, teacher, labels = t([0.0, 0.0, LN3]), t([LN2, 0.0, 0.0]), torch.tensor([0])
    target = 0.5 * math.log(5)
    gamma = 1.5
    non_1 = 0.5 * math.log(4) + 0.5 * math.log(4 / 3)
    check(
        build_loss("nkd", temperature=1.0, gamma=gamma)(student, teacher, labels),
        target + gamma * non_1,
    )
    r3 = math.sqrt(3)
    non_2 = -0.5 * math.log(1 / (1 + r3)) - 0.5 * math.log(r3 / (1 + r3))
    check(
        build_loss("nkd", temperature=2.0, gamma=gamma)(student, teacher, labels),
        target + gamma * 4 * non_2,
    )


@case("nkd")
def test_nkd_with_a_one_hot_teacher_and_no_non_target_part_is_cross_entropy():
    # Limiting case: a teacher sure of the label (T_y -> 1, the one-hot label of plain training) and
    # gamma = 0 leave -log S_y, the cross-entropy. z_s = [0, 0, ln 3], y = 0: CE = ln 5.
    student, teacher, labels = t([0.0, 0.0, LN3]), t([100.0, 0.0, 0.0]), torch.tensor([0])
    check(nkd_loss(student, teacher, labels, gamma=0.0), math.log(5))


@case("mlkd")
def test_mlkd_hand_computed():
    # P = softmax(Z / T); L = T^2 KL(P_t || P_s) + ||P_s P_s^T - P_t P_t^T||_F^2 / B
    #                        + ||P_s^T P_s - P_t^T P_t||_F^2 / C              (Jin et al., one temperature)
    # B = C = 2: P_t = [[3/4, 1/4], [1/4, 3/4]], P_s = all 1/2.
    # instance: KL = 3/4 ln(3/2) + 1/4 ln(1/2) for both rows.
    # batch: P_s P_s^T = all 1/2; P_t P_t^T = [[10, 6], [6, 10]] / 16 -> squared error 4 * (1/8)^2 = 1/16,
    #        / B = 1/32. class: P^T P has the same entries here -> 1/32.
    teacher = t([LN3, 0.0], [0.0, LN3])
    student = t([0.0, 0.0], [0.0, 0.0])
    instance = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    check(build_loss("mlkd", temperatures=[1.0])(student, teacher), instance + 1 / 32 + 1 / 32)
    # T = 2 on doubled logits: same P, so only the instance level gains T^2 = 4
    check(build_loss("mlkd", temperatures=[2.0])(2 * student, 2 * teacher), 4 * instance + 1 / 16)


@case("mlkd")
def test_mlkd_instance_level_alone_is_kd():
    # Limiting case: the instance-level alignment at one temperature is Hinton's KD (Jin et al.);
    # the prediction augmentation sums it over temperatures.
    g = torch.Generator().manual_seed(0)
    s, t_ = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    check(mlkd_loss(s, t_, (3.0,), 1, 0, 0), float(kd_loss(s, t_, 3.0)))
    check(mlkd_loss(s, t_, (2.0, 5.0), 1, 0, 0), float(kd_loss(s, t_, 2.0) + kd_loss(s, t_, 5.0)))


@case("ttm")
def test_ttm_hand_computed():
    # L = mean_b KL( p_t^gamma / sum_j p_t,j^gamma || softmax(z_s) ),  gamma = 1/T   (Zheng & Yang)
    # T = 2: z_t = [0, 2 ln 3] -> p_t = [1/10, 9/10]; p_t^(1/2) = [1, 3] / sqrt 10 -> transformed [1/4, 3/4].
    # z_s = 0 -> [1/2, 1/2]; KL = 1/4 ln(1/2) + 3/4 ln(3/2). No T^2 factor.
    p_t = [0.1, 0.9]
    powered = [p**0.5 for p in p_t]
    transformed = [p / sum(powered) for p in powered]
    assert transformed == pytest.approx([0.25, 0.75])
    expected = kl(transformed, [0.5, 0.5])
    assert expected == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    check(build_loss("ttm", temperature=2.0)(t([0.0, 0.0]), t([0.0, 2 * LN3])), expected)


@case("wttm")
def test_wttm_hand_computed():
    # L = mean_b U(p_t) * KL( softmax(z_t / T) || softmax(z_s) ),  U(p) = sum_j p_j^(1/T)  (Zheng & Yang)
    # T = 2. sample 1: p_t = [1/10, 9/10], U = (1 + 3) / sqrt 10, KL as in the TTM case.
    # sample 2: uniform teacher, U = 2 * (1/2)^(1/2) = sqrt 2 (= C^(1 - gamma));
    #           z_s = [0, ln 3] -> [1/4, 3/4]; KL([1/2, 1/2] || [1/4, 3/4]) = 1/2 ln 2 + 1/2 ln(2/3).
    u_1, kl_1 = 4 / math.sqrt(10), 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    u_2, kl_2 = math.sqrt(2), 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    expected = (u_1 * kl_1 + u_2 * kl_2) / 2
    student = t([0.0, 0.0], [0.0, LN3])
    teacher = t([0.0, 2 * LN3], [0.0, 0.0])
    check(build_loss("wttm", temperature=2.0)(student, teacher), expected)


@case("logit_mse")
def test_logit_mse_hand_computed():
    # Ba & Caruana: regress the logits, (1/2N) sum_n ||z_s - z_t||^2; the loss's "mean" reduction is
    # mean over samples and classes of (z_s - z_t)^2, "batchmean" mean over samples of ||z_s - z_t||^2.
    # differences [[-1, 0], [2, -1]] -> squares 1, 0, 4, 1: mean 6/4, batchmean 6/2 (twice Ba & Caruana's 3/2)
    student, teacher = t([0.0, 1.0], [2.0, 2.0]), t([1.0, 1.0], [0.0, 3.0])
    check(build_loss("logit_mse")(student, teacher), 1.5)
    check(build_loss("logit_mse", reduction="batchmean")(student, teacher), 3.0)
    check(logit_mse_loss(student, teacher, "batchmean") / 2, 1.5)


@case("wsld")
def test_wsld_hand_computed():
    # r_i = CE(z_s,i, y_i) / CE(z_t,i, y_i), w_i = 1 - exp(-r_i) (T = 1, no gradient);
    # L = T^2 mean_i w_i * CE(softmax(z_t,i / T), softmax(z_s,i / T))      (Zhou et al.)
    # T = 2, labels 0. sample 1 (student lags): z_s = 0 -> CE_s = ln 2; z_t = [2 ln 3, 0] -> [9/10, 1/10],
    #   CE_t = ln(10/9); at T = 2 the teacher is [3/4, 1/4], the student [1/2, 1/2]: soft CE = ln 2.
    # sample 2 (student ahead): the two swapped: CE_s = ln(10/9), CE_t = ln 2;
    #   soft CE = -(1/2 ln(3/4) + 1/2 ln(1/4)).
    w_1 = 1 - math.exp(-math.log(2) / math.log(10 / 9))
    w_2 = 1 - math.exp(-math.log(10 / 9) / math.log(2))
    ce_1, ce_2 = math.log(2), -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    expected = 4 * (w_1 * ce_1 + w_2 * ce_2) / 2
    student = t([0.0, 0.0], [2 * LN3, 0.0])
    teacher = t([2 * LN3, 0.0], [0.0, 0.0])
    check(build_loss("wsld", temperature=2.0)(student, teacher, torch.tensor([0, 0])), expected)


@case("wsld")
def test_wsld_limits_of_the_weight():
    # Limiting cases (Zhou et al.): a student far behind the teacher (r -> inf) has w -> 1 and the
    # term is the soft-label cross-entropy, KD plus T^2 times the teacher's entropy; a student that
    # fits the label perfectly (CE_s -> 0) has w -> 0, a pure "regularization sample".
    # T = 2, z_t = [2 ln 3, 0] -> [3/4, 1/4] at T = 2, entropy H = -(3/4 ln 3/4 + 1/4 ln 1/4).
    teacher, label = t([2 * LN3, 0.0]), torch.tensor([0])
    lagging = t([-40.0, 0.0])
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    got = build_loss("wsld", temperature=2.0)(lagging, teacher, label)
    check(got - kd_loss(lagging, teacher, 2.0), 4 * entropy, rel=1e-5)
    check(build_loss("wsld", temperature=2.0)(t([40.0, 0.0]), teacher, label), 0.0)


@case("dist")
def test_dist_hand_computed():
    # Y = softmax(Z / tau); L = tau^2 (beta (1 - mean_i rho(Y_s[i], Y_t[i]))
    #                                  + gamma (1 - mean_j rho(Y_s[:, j], Y_t[:, j])))   (Huang et al.)
    # Y_s = [[1/6, 1/3, 1/2], [.5, .3, .2]], Y_t = [[1/4, 1/4, 1/2], [.5, .3, .2]].
    # inter: row 1 centred s = [-1/6, 0, 1/6], t = [-1/12, -1/12, 1/6]: rho = (1/24) / (sqrt2/6 * sqrt6/12)
    #        = sqrt(3)/2; row 2 identical: rho = 1.
    # intra (2 samples: rho = sign of the product of the differences): class 0 +1, class 1 -1
    #        (1/3 > .3 but 1/4 < .3), class 2 +1 -> mean 1/3.
    rho_1 = math.sqrt(3) / 2
    assert pearson([1 / 6, 1 / 3, 1 / 2], [1 / 4, 1 / 4, 1 / 2]) == pytest.approx(rho_1)
    inter = 1 - (rho_1 + 1) / 2
    intra = 1 - (1 - 1 + 1) / 3
    student = torch.log(t([1 / 6, 1 / 3, 1 / 2], [0.5, 0.3, 0.2]))
    teacher = torch.log(t([1 / 4, 1 / 4, 1 / 2], [0.5, 0.3, 0.2]))
    beta, gamma = 1.0, 2.0
    expected = beta * inter + gamma * intra
    check(build_loss("dist", beta=beta, gamma=gamma, temperature=1.0)(student, teacher), expected)
    # tau = 2 on doubled logits: same Y, times tau^2 = 4
    loss = build_loss("dist", beta=beta, gamma=gamma, temperature=2.0)
    check(loss(2 * student, 2 * teacher), 4 * expected)


# ============================================================================= feature losses
@case("fitnet")
def test_fitnet_hand_computed():
    # L = mean (u_s - u_t)^2  (Romero et al.; the regressor is the term's projector, here none)
    # a 1x1x2x2 map: errors 1, 2, 3, 4 -> (1 + 4 + 9 + 16) / 4 = 7.5
    student = torch.tensor([[[[2.0, 2.0], [2.0, 2.0]]]])
    teacher = torch.tensor([[[[1.0, 0.0], [-1.0, -2.0]]]])
    check(build_loss("fitnet")(student, teacher), 7.5)


@case("at")
def test_at_hand_computed():
    # Q(f) = mean_c |f_c|^2 flattened over H*W and L2-normalised;
    # L = mean_{b, hw} (Q_s / |Q_s| - Q_t / |Q_t|)^2                  (Zagoruyko & Komodakis)
    # student: both channels [[2, 0], [0, 0]] -> Q = [4, 0, 0, 0] -> [1, 0, 0, 0]
    # teacher: [[1, 1], [1, 1]] and [[-1, 1], [1, -1]] (|.| matters) -> Q = [1, 1, 1, 1] -> all 1/2
    # differences [1/2, -1/2, -1/2, -1/2] -> mean square 1/4
    student = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]]]])
    teacher = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[-1.0, 1.0], [1.0, -1.0]]]])
    check(build_loss("at")(student, teacher), 0.25)


@case("fsp")
def test_fsp_hand_computed():
    # G(F1, F2)_ij = mean_hw F1_i(h, w) F2_j(h, w); L = mean (G_s - G_t)^2     (Yim et al.)
    # F1 (shared): channels [[1, 0], [0, 1]] and [[0, 1], [1, 0]].
    # student F2 = [[1, 1], [0, 0]] -> G_s = [1/4, 1/4]; teacher F2 = [[2, 0], [0, 0]] -> G_t = [1/2, 0].
    # L = ((1/4)^2 + (1/4)^2) / 2 = 1/16
    f1 = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])
    s2 = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    t2 = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]]])
    loss = build_loss("fsp")
    loss.build([f1, s2], [f1, t2])
    check(loss([f1, s2], [f1.clone(), t2]), 1 / 16)


@case("nst")
def test_nst_hand_computed():
    # channel patterns f_c / |f_c| over H*W; k(x, y) = (x.y + c)^d;
    # L = mean k(t, t') + mean k(s, s') - 2 mean k(s, t)                (Huang & Wang)
    # student channels e1 (from [[3, 0], [0, 0]]) and e2 (from [[0, 1], [0, 0]]);
    # teacher channels both u = (e1 + e2) / sqrt 2. Dots: t.t' = 1, s.s' = I, s.t = 1/sqrt 2.
    # d = 2, c = 0: 1 + (1 + 0 + 0 + 1)/4 - 2 * 1/2 = 1/2
    # d = 2, c = 1: (1+1)^2 + (4 + 1 + 1 + 4)/4 - 2 (1 + 1/sqrt 2)^2 = 3.5 - 2 sqrt 2
    student = torch.tensor([[[[3.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]]])
    teacher = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]], [[2.0, 2.0], [0.0, 0.0]]]])
    check(build_loss("nst")(student, teacher), 0.5)
    check(build_loss("nst", degree=2, constant=1.0)(student, teacher), 3.5 - 2 * math.sqrt(2))


@case("cwd")
def test_cwd_hand_computed():
    # L = tau^2 / (B C) * sum_{b, c} KL( softmax(t_bc / tau) || softmax(s_bc / tau) ) over H*W
    # (Shu et al.). tau = 1, B = 1, C = 2, H = W = 2:
    # channel 0: teacher [ln 3, 0, 0, 0] -> [1/2, 1/6, 1/6, 1/6]; student 0 -> uniform 1/4.
    #            KL = 1/2 ln 2 + 1/2 ln(2/3)
    # channel 1: teacher 5 everywhere -> uniform; student [0, 0, ln 3, 0] -> [1/6, 1/6, 1/2, 1/6].
    #            KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    kl_0 = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    kl_1 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    expected = (kl_0 + kl_1) / 2
    student = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [LN3, 0.0]]]])
    teacher = torch.tensor([[[[LN3, 0.0], [0.0, 0.0]], [[5.0, 5.0], [5.0, 5.0]]]])
    check(build_loss("cwd", tau=1.0)(student, teacher), expected)
    # tau = 4 on maps multiplied by 4: same distributions, times tau^2 = 16
    check(build_loss("cwd", tau=4.0)(4 * student, 4 * teacher), 16 * expected)


@case("ab")
def test_ab_hand_computed():
    # l(s, t) = sum (s + m)^2 [s > -m][t <= 0] + (s - m)^2 [s <= m][t > 0]   (Heo et al. AAAI, Eq. 6)
    # L = 3/1000 * sum_levels 2^(level - n + 1) * l / B, m = 1.
    # level 0 (equal widths: no connector): s = [[.5, -2, 2], [2, 0, -2]], t = [[1, 1, 1], [-1, 0, -1]]
    #   t on:  (.5 - 1)^2 = .25, (-2 - 1)^2 = 9, s = 2 > m: 0
    #   t off: (2 + 1)^2 = 9, (0 + 1)^2 = 1 (t = 0 is off), s = -2 <= -m: 0     -> l = 19.25
    # level 1 (student 2 channels, teacher 1): connector conv1x1 set to [1, 1] (sum), BN as identity.
    #   s = -.25 - .25 = -.5, t = 3 (on): (-.5 - 1)^2 = 2.25
    # n = 2: level weights 1/2 and 1.
    s0 = torch.tensor([[[[0.5, -2.0, 2.0], [2.0, 0.0, -2.0]]]])
    t0 = torch.tensor([[[[1.0, 1.0, 1.0], [-1.0, 0.0, -1.0]]]])
    s1 = torch.tensor([[[[-0.25]], [[-0.25]]]])
    t1 = torch.tensor([[[[3.0]]]])
    loss = build_loss("ab")
    loss.build([s0, s1], [t0, t1])
    assert isinstance(loss.connectors[0], nn.Identity)
    conv, bn = loss.connectors[1]
    with torch.no_grad():
        conv.weight.fill_(1.0)
    identity_bn_(bn)
    check(loss([s0, s1], [t0, t1]), 3 / 1000 * (0.5 * 19.25 + 2.25))


@case("ofd")
def test_ofd_hand_computed():
    # T = max(t, m); d_p = (S - T)^2 unless S <= T <= 0;
    # L = sum_i 2^-(n-1-i) * (1/B) sum d_p(T, r(s))                        (Heo et al. ICCV)
    # margin m = -1 (set), connector conv1x1 + BN set to the identity.
    # t = [[2, -3], [-.5, .5]] -> T = [[2, -1], [-.5, .5]]; s = [[1, -2], [0, .5]]
    #   (1 - 2)^2 = 1; -2 <= -1 <= 0: 0; 0 > -.5: (0 + .5)^2 = .25; .5 = .5: 0      -> 1.25
    # two identical levels: weights 1/2 and 1 -> 1.875
    s = torch.tensor([[[[1.0, -2.0], [0.0, 0.5]]]])
    t_ = torch.tensor([[[[2.0, -3.0], [-0.5, 0.5]]]])
    loss = build_loss("ofd")
    loss.build([s, s], [t_, t_])
    for conv, bn in loss.connectors:
        identity_(conv)
        identity_bn_(bn)
    loss.set_margins([torch.tensor([-1.0]), torch.tensor([-1.0])])
    check(loss([s, s], [t_, t_]), 1.5 * 1.25)


@case("ofd")
def test_ofd_margin_is_the_mean_of_the_negative_part_of_a_gaussian():
    # m = E[x | x < 0] = mu - sigma * phi(mu / sigma) / Phi(-mu / sigma)      (Heo et al. ICCV)
    # standard normal: -phi(0) / Phi(0) = -(1 / sqrt(2 pi)) / (1/2) = -sqrt(2 / pi)
    # mu = 1, sigma = 2: 1 - 2 phi(1/2) / Phi(-1/2), Phi(x) = erfc(-x / sqrt 2) / 2
    # mu = 4, sigma = 1: Phi(-4) ~ 3e-5 <= 0.001, the paper's -3 sigma
    phi = math.exp(-0.125) / math.sqrt(2 * math.pi)
    cdf = 0.5 * math.erfc(0.5 / math.sqrt(2))
    got = ofd_margin(torch.tensor([0.0, 1.0, 4.0]), torch.tensor([1.0, 2.0, 1.0])).tolist()
    assert got == pytest.approx([-math.sqrt(2 / math.pi), 1 - 2 * phi / cdf, -3.0], rel=1e-6)


@case("vid")
def test_vid_hand_computed():
    # -log q(t | s) = sum_c [ (t - mu)^2 / (2 sigma_c^2) + 1/2 log sigma_c^2 ] + const  (Ahn et al.)
    # averaged over elements; mu = r(s) with the regressor set to the identity (1x1 convs = I, inputs
    # positive so the ReLUs pass them), sigma^2 = softplus(alpha) + eps set to [2, 1/2].
    # s = [3, 1], t = [1, 1] (one 1x1 location, 2 channels):
    #   channel 0: 1/2 (4/2 + ln 2) = 1 + 1/2 ln 2;  channel 1: 1/2 (0 + ln 1/2) = -1/2 ln 2;  mean 1/2
    s = torch.tensor([[[[3.0]], [[1.0]]]])
    t_ = torch.tensor([[[[1.0]], [[1.0]]]])
    loss = build_loss("vid")
    loss.build(s, t_)
    for layer in loss.regressors[0]:
        if isinstance(layer, nn.Conv2d):
            identity_(layer)
    with torch.no_grad():
        loss.log_scales[0].copy_(
            torch.tensor([math.log(math.expm1(v - loss.eps)) for v in (2.0, 0.5)])
        )
    assert loss.variances()[0].tolist() == pytest.approx([2.0, 0.5], rel=1e-6)
    check(loss(s, t_), 0.5)


@case("ft")
def test_ft_hand_computed():
    # L = mean | F_s / |F_s| - F_t / |F_t| |^p + w_rec * mean (P_dec(F_t) - t)^2     (Kim et al.)
    # paraphraser and translator set to identity 3x3 convs (inputs >= 0 pass the LeakyReLUs), except the
    # decoder's last conv, set to 2 * identity: P_dec(F_t) = 2t.
    # s: all ones (8 entries) -> every entry 1/sqrt 8; t: one entry 2 -> e_1.
    # p = 1: ((1 - 1/sqrt 8) + 7/sqrt 8) / 8 = (1 + 6/sqrt 8) / 8
    # p = 2: ((1 - 1/sqrt 8)^2 + 7/8) / 8 = (2 - 2/sqrt 8) / 8
    # reconstruction: mean (2t - t)^2 = 4/8; weight 1/2 -> 1/4
    s = torch.ones(1, 2, 2, 2)
    t_ = torch.zeros(1, 2, 2, 2)
    t_[0, 0, 0, 0] = 2.0
    r8 = math.sqrt(8)
    for p, factor in ((1, (1 + 6 / r8) / 8), (2, (2 - 2 / r8) / 8)):
        loss = build_loss("ft", rate=1.0, p=p, reconstruction_weight=0.5)
        loss.build(s, t_)
        for module in loss.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                identity_(module)
        identity_(loss.paraphraser.decoder[4], scale=2.0)
        check(loss(s, t_), factor + 0.5 * 0.5)


def _mgd_with_identity_generator(student, teacher, **options):
    loss = build_loss("mgd", **options)
    loss.build(student, teacher)
    identity_(loss.generation[0])
    identity_(loss.generation[2])
    return loss


@case("mgd")
def test_mgd_hand_computed_without_masking():
    # L = (1/B) sum (G(align(s) * M) - t)^2, G = conv3x3-ReLU-conv3x3        (Yang et al.)
    # mask ratio 0: M = 1. G set to the identity (zero biases; s >= 0 passes the ReLU); equal widths,
    # so no align conv. s = 1 everywhere (B = 2, 1x2x2 each); t = 1 for sample 1 (error 0) and
    # [[0, 0], [0, 3]] for sample 2 (errors 1, 1, 1, 4). L = 7 / 2.
    s = torch.ones(2, 1, 2, 2)
    t_ = torch.ones(2, 1, 2, 2)
    t_[1] = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    loss = _mgd_with_identity_generator(s, t_, mask_ratio=0.0)
    assert loss.align is None
    check(loss(s, t_), 3.5)


@case("mgd")
def test_mgd_hand_computed_with_a_given_mask(monkeypatch):
    # The random mask fixed to M = [1, 0] over 2 channels (channel 1 masked): G(s * M) = [s_0, 0], so
    # L = (sum (s_0 - t_0)^2 + sum t_1^2) / B. s = [[[1, 2]], [[5, 5]]], t = [[[0, 2]], [[1, -1]]] (1x2 map):
    # (1 + 0) + (1 + 1) = 3, B = 1.
    # Limiting case: everything masked (M = 0) leaves G(0) = 0 (zero biases): L = sum t^2 / B = 6.
    s = torch.tensor([[[[1.0, 2.0]], [[5.0, 5.0]]]])
    t_ = torch.tensor([[[[0.0, 2.0]], [[1.0, -1.0]]]])
    loss = _mgd_with_identity_generator(s, t_, mask_ratio=0.5)
    for keep, expected in (([1.0, 0.0], 3.0), ([0.0, 0.0], 6.0)):
        mask = torch.tensor(keep).view(1, 2, 1, 1)
        monkeypatch.setattr(mgd_module, "random_mask", lambda *args, mask=mask: mask)
        check(loss(s, t_), expected)


@case("reviewkd")
def test_reviewkd_hcl_hand_computed():
    # HCL(F, T) = [MSE(F, T) + sum_k 2^-k MSE(pool_k(F), pool_k(T))] / (1 + sum_k 2^-k)  (Chen et al.)
    # over the pyramid sizes 4, 2, 1 smaller than H = 4: sizes 2 (weight 1/2) and 1 (weight 1/4).
    # F - T = +4 at (0, 0), -4 at (3, 3): MSE = 32/16 = 2; 2x2 pooled: +1 and -1 in two of 4 cells:
    # MSE 2/4 = 1/2; 1x1 pooled: 0. HCL = (2 + 1/4 + 0) / (7/4) = 9/7.
    fs = torch.zeros(1, 1, 4, 4)
    ft = torch.zeros(1, 1, 4, 4)
    fs[0, 0, 0, 0] = 4.0
    ft[0, 0, 3, 3] = 4.0
    check(hcl_loss([fs], [ft]), 9 / 7)


@case("reviewkd")
def test_reviewkd_full_module_with_identity_fusion_hand_computed():
    # Two levels, mid channels 1; every conv the identity, BN the identity, the attention conv zero
    # (sigmoid(0) = 1/2 for both maps). Deep level (1x1): out_1 = x_1 = 2, t_1 = 1 -> HCL = MSE = 1
    # (no pyramid below 1x1). Shallow level (2x2): x = 1/2 x_0 + 1/2 up(x_1) = x_0 / 2 + 1;
    # x_0 = [[0, 2], [4, 6]] -> [[1, 2], [3, 4]]; t_0 = [[1, 2], [3, 0]]: MSE = 16/4 = 4, pooled to 1x1
    # (weight 1/2): (10/4 - 6/4)^2 = 1 -> (4 + 1/2) / (3/2) = 3. L = 1 + 3 = 4.
    x0 = torch.tensor([[[[0.0, 2.0], [4.0, 6.0]]]])
    x1 = torch.tensor([[[[2.0]]]])
    t0 = torch.tensor([[[[1.0, 2.0], [3.0, 0.0]]]])
    t1 = torch.tensor([[[[1.0]]]])
    loss = build_loss("reviewkd")
    loss.build([x0, x1], [t0, t1])
    loss.eval()
    for fusion in loss.fusions:
        identity_(fusion.conv1[0])
        identity_bn_(fusion.conv1[1])
        identity_(fusion.conv2[0])
        identity_bn_(fusion.conv2[1])
    with torch.no_grad():
        loss.fusions[0].att_conv[0].weight.zero_()
        loss.fusions[0].att_conv[0].bias.zero_()
    assert loss.fusions[1].att_conv is None
    check(loss([x0, x1], [t0, t1]), 4.0)


@case("ickd")
def test_ickd_hand_computed():
    # G = rownorm(F F^T) per sample (C x C), F the map flattened to (C, H*W);
    # L = 1/(B C) sum_b ||G_s - G_t||_F^2                                     (Liu et al.)
    # the student's embedding (conv1x1 + BN, built in build()) is set to conv [[1, 0, 0], [0, 1, 1]]
    # and BN as the identity: student channels [1, 0], [0, .5], [0, .5] -> [1, 0], [0, 1], G_s = I.
    # teacher channels [1, 0], [2, 0] -> F F^T = [[1, 2], [2, 4]] -> both rows [1, 2] / sqrt 5.
    r5 = math.sqrt(5)
    expected = ((1 / r5 - 1) ** 2 + (2 / r5) ** 2 + (1 / r5) ** 2 + (2 / r5 - 1) ** 2) / (1 * 2)
    student = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.5]], [[0.0, 0.5]]]])
    teacher = torch.tensor([[[[1.0, 0.0]], [[2.0, 0.0]]]])
    loss = build_loss("ickd")
    loss.build(student, teacher)
    with torch.no_grad():
        loss.embed.conv.weight.copy_(
            torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]).view(2, 3, 1, 1)
        )
    identity_bn_(loss.embed.bn)
    check(loss(student, teacher), expected)
    # without the embedding, on the student's own two channels [1, 0], [0, .5]: G_s = I as well
    check(build_loss("ickd", embed=False)(student[:, :2], teacher), expected)


# ============================================================================= relation losses
@case("sp")
def test_sp_hand_computed():
    # G = Q Q^T with L2-normalised rows; L = ||G_t - G_s||_F^2 / B^2       (Tung & Mori, Eq. 3-4)
    # student q = [1, 0], [0, 1] -> G_s = I. teacher q = [1, 0], [1, 1] -> G~ = [[1, 1], [1, 2]]
    # -> rows [1, 1]/sqrt 2 and [1, 2]/sqrt 5.
    r2, r5 = math.sqrt(2), math.sqrt(5)
    expected = ((1 / r2 - 1) ** 2 + (1 / r2) ** 2 + (1 / r5) ** 2 + (2 / r5 - 1) ** 2) / 4
    check(build_loss("sp")(t([1.0, 0.0], [0.0, 1.0]), t([1.0, 0.0], [1.0, 1.0])), expected)


@case("pkt")
def test_pkt_hand_computed():
    # K(i, j) = (1 + cos(f_i, f_j)) / 2, p_{j|i} = K(i, j) / sum_j K(i, j);
    # L = mean_{i, j} p^t_{j|i} log(p^t_{j|i} / p^s_{j|i})                (Passalis & Tefas)
    # student [1, 0], [0, 1]: cos = 0 -> K = [[1, 1/2], [1/2, 1]] -> p = [[2/3, 1/3], [1/3, 2/3]]
    # teacher [1, 0], [2, 0]: cos = 1 -> p = 1/2 everywhere.
    # L = (2 * 1/2 ln(3/4) + 2 * 1/2 ln(3/2)) / 4 = ln(9/8) / 4
    check(
        build_loss("pkt")(t([1.0, 0.0], [0.0, 1.0]), t([1.0, 0.0], [2.0, 0.0])), math.log(9 / 8) / 4
    )


@case("rkd")
def test_rkd_hand_computed():
    # psi_D = d(i, j) / mu, mu = mean distance over pairs i != j; L_D = mean_{i,j} huber(psi_s - psi_t)
    # psi_A = cos of the angle at i of (j, i, k); L_A = mean_{i,j,k} huber(...)   (Park et al.)
    # (means over all B^2 / B^3 entries, the degenerate ones 0 on both sides, as the authors' code)
    # student: right isosceles triangle (0,0), (1,0), (0,1): d = 1, 1, sqrt 2, mu = (2 + sqrt 2) / 3.
    # teacher: equilateral triangle of side 2: psi = 1 for every pair; every angle 60 deg (cos 1/2).
    # distances: a = 3/(2 + sqrt 2) - 1 (twice per ordered pair, two such pairs), b = 3 sqrt2/(2 + sqrt2) - 1
    # angles: at the right angle cos 0 vs 1/2, at the others cos 45 deg vs 1/2; each for 2 ordered (j, k).
    r2 = math.sqrt(2)
    a, b = 3 / (2 + r2) - 1, 3 * r2 / (2 + r2) - 1
    loss_d = (4 * huber(a) + 2 * huber(b)) / 9
    loss_a = (2 * huber(0 - 0.5) + 4 * huber(r2 / 2 - 0.5)) / 27
    student = t([0.0, 0.0], [1.0, 0.0], [0.0, 1.0])
    teacher = t([0.0, 0.0], [2.0, 0.0], [1.0, math.sqrt(3)])
    check(
        build_loss("rkd", distance_weight=1.0, angle_weight=0.0)(student, teacher), loss_d, rel=1e-4
    )
    check(
        build_loss("rkd", distance_weight=0.0, angle_weight=1.0)(student, teacher), loss_a, rel=1e-4
    )
    check(build_loss("rkd")(student, teacher), 25 * loss_d + 50 * loss_a, rel=1e-4)


@case("irg")
def test_irg_hand_computed():
    # vertex L_V = mean (z_s - z_t)^2 on the last tap (logits);
    # edge   L_E = mean_l mean_ij (A_s - A_t)^2, A_ij = ||f_i - f_j||^2 / max A;
    # transform L_T = mean_i (T_s - T_t)^2, T_i = ||f_i^l - f_i^(l+1)||^2 / max T
    # (the earlier map pooled to the later size, the later map's channels averaged in groups);
    # L = 0.1 L_V + 5 L_E + 5 L_T                                             (Liu et al., CVPR 2019)
    # B = 3. tap 1 (3x1x1x2, rows as points): student (0,0), (1,0), (0,1): d^2 = 1, 1, 2 -> [.5, .5, 1]
    #        (pairs 01, 02, 12); teacher (0,0), (1,0), (2,0): d^2 = 1, 4, 1 -> [.25, 1, .25].
    #        differences .25, -.5, .75, each twice among 9 entries: 2 (1/16 + 1/4 + 9/16) / 9 = 7/36.
    # tap 2 (3x2x1x1): student (0,0), (2,0), (0,2): d^2 = 4, 4, 8 -> the same [.5, .5, 1];
    #        teacher (1,1), (1,2), (1,3): d^2 = 1, 4, 1 -> [.25, 1, .25]; again 7/36. L_E = 7/36.
    # transform 1 -> 2: tap 1 pooled to 1x1 (mean of its 2 values), tap 2's 2 channels averaged:
    #        student [0, .5, .5] vs [0, 1, 1]: d = [0, .25, .25] -> T_s = [0, 1, 1];
    #        teacher [0, .5, 1] vs [1, 1.5, 2]: d = [1, 1, 1] -> T_t = [1, 1, 1]. L_T = 1/3.
    # logits: student [[0, 0], [1, 1], [2, 2]], teacher [[0, 1], [1, 1], [2, 0]]: L_V = (1 + 4) / 6.
    s1 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).view(3, 1, 1, 2)
    t1 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]).view(3, 1, 1, 2)
    s2 = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]).view(3, 2, 1, 1)
    t2 = torch.tensor([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]]).view(3, 2, 1, 1)
    z_s = t([0.0, 0.0], [1.0, 1.0], [2.0, 2.0])
    z_t = t([0.0, 1.0], [1.0, 1.0], [2.0, 0.0])
    vertex, edge, transform = 5 / 6, 7 / 36, 1 / 3
    student, teacher = [s1, s2, z_s], [t1, t2, z_t]
    check(build_loss("irg")(student, teacher), 0.1 * vertex + 5 * edge + 5 * transform)
    check(
        build_loss("irg", vertex_weight=1.0, edge_weight=0.0, transform_weight=0.0)(
            student, teacher
        ),
        vertex,
    )
    check(
        build_loss("irg", vertex_weight=0.0, edge_weight=1.0, transform_weight=0.0)(
            student, teacher
        ),
        edge,
    )
    check(
        build_loss("irg", vertex_weight=0.0, edge_weight=0.0, transform_weight=1.0)(
            student, teacher
        ),
        transform,
    )


@case("cc")
def test_cc_hand_computed():
    # C_ij = k(f_i, f_j) ~= exp(-2 gamma) sum_{p=0..P} (2 gamma)^p / p! (f_i . f_j)^p on unit vectors;
    # L = ||C_s - C_t||_F^2 / n^2                                             (Peng et al., Eq. 8-9)
    # the student's linear embedding (built in build()) is set to the identity with zero bias.
    # student [1, 0], [0, 2] -> dot 0; teacher [1, 0], [3, 0] -> dot 1. Diagonals agree; the two
    # off-diagonal entries differ by exp(-2 gamma) (2 gamma + (2 gamma)^2 / 2).
    # gamma = 0.4, P = 2: each differs by 1.12 exp(-0.8); L = 2 (1.12 e^-0.8)^2 / 4.
    # bilinear kernel (C = F F^T): off-diagonals differ by 1; L = 2 / 4.
    student, teacher = t([1.0, 0.0], [0.0, 2.0]), t([1.0, 0.0], [3.0, 0.0])
    for kernel, expected in (("gaussian", (1.12 * math.exp(-0.8)) ** 2 / 2), ("bilinear", 0.5)):
        loss = build_loss("cc", kernel=kernel, embed_dim=2)
        loss.build(student, teacher)
        with torch.no_grad():
            loss.embed.weight.copy_(torch.eye(2))
            loss.embed.bias.zero_()
        check(loss(student, teacher), expected)


@case("crd")
def test_crd_hand_computed():
    # h(i, j) = exp(s_i . m_j / tau) / Z, Z = M * mean(exp(. / tau)) over the first batch;
    # D = h / (h + K/M); L_side = -[log D(i, i) + sum_{j in negatives} log(1 - D(i, j))]  (Tian et al.,
    # Eq. 18); L = L_student_anchor + L_teacher_anchor.
    # Heads set to the identity (zero bias), tau = 1 / ln 2 (so exp(x / tau) = 2^x), M = 3, K = 2,
    # contrast index [0 (positive), 1, 2] given. Student anchor s = [1, 0] against the teacher bank
    # [[1, 0], [0, 1], [-1, 0]]: scores [2, 1, 1/2]. Teacher anchor t = [0, 1] against the student bank
    # [[0, 1], [1, 0], [0, -1]]: scores [2, 1, 1/2]. Z = 3 * (7/2) / 3 = 7/2 -> h = [4/7, 2/7, 1/7].
    # K/M = 2/3: D(pos) = (4/7) / (4/7 + 2/3) = 6/13; 1 - D = (2/3) / (h + 2/3) = 7/10 and 14/17.
    per_side = -(math.log(6 / 13) + math.log(7 / 10) + math.log(14 / 17))
    loss = build_loss("crd", feat_dim=2, num_negatives=2, temperature=1 / LN2)
    student, teacher = t([3.0, 0.0]), t([0.0, 0.5])
    loss.build(student, teacher, num_samples=3)
    assert loss.negatives == 2
    with torch.no_grad():
        for head in (loss.embed_student, loss.embed_teacher):
            head.linear.weight.copy_(torch.eye(2))
            head.linear.bias.zero_()
        loss.memory_teacher.copy_(t([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]))
        loss.memory_student.copy_(t([0.0, 1.0], [1.0, 0.0], [0.0, -1.0]))
    loss.eval()  # the banks stay as set (they only move in training mode)
    got = loss(student, teacher, index=torch.tensor([0]), contrast_index=torch.tensor([[0, 1, 2]]))
    check(got, 2 * per_side, rel=1e-5)
    assert float(loss.z_student) == pytest.approx(3.5)
    assert float(loss.z_teacher) == pytest.approx(3.5)


# ============================================================================= text (token sequences)
GARBAGE = 1e4  # what padded positions hold in these cases; the mask must make it irrelevant


@case("hidden_mse")
def test_hidden_mse_hand_computed():
    # L = mean over real tokens and features of (h_s W_h - h_t)^2                  (TinyBERT, Eq. 8)
    # Equal widths: real token s = [1, 2], t = [0, 4] -> (1 + 4) / 2; the padded token is ignored.
    student = torch.tensor([[[1.0, 2.0], [GARBAGE, -GARBAGE]]])
    teacher = torch.tensor([[[0.0, 4.0], [-GARBAGE, 0.0]]])
    loss = build_loss("hidden_mse")
    loss.build(student, teacher)
    check(loss(student, teacher, torch.tensor([[1, 0]])), 2.5)
    # Width 1 -> 2 through W_h = [[2], [-1]], b = [0, 1]: s = 3 -> [6, -2]; t = [5, 0]
    # -> (1^2 + 2^2) / 2 = 2.5; two tokens, both real: second s = 0 -> [0, 1], t = [0, 1] -> 0.
    # Mean over 2 tokens x 2 features: (1 + 4 + 0 + 0) / 4.
    student, teacher = torch.tensor([[[3.0], [0.0]]]), torch.tensor([[[5.0, 0.0], [0.0, 1.0]]])
    loss = build_loss("hidden_mse")
    loss.build(student, teacher)
    with torch.no_grad():
        loss.projector.weight.copy_(torch.tensor([[2.0], [-1.0]]))
        loss.projector.bias.copy_(torch.tensor([0.0, 1.0]))
    check(loss(student, teacher), 5 / 4)


@case("hidden_cosine")
def test_hidden_cosine_hand_computed():
    # L = mean over real tokens of 1 - cos(h_s, h_t)                              (DistilBERT L_cos)
    # token 1: [1, 0] vs [1, 1] -> cos = 1/sqrt(2); token 2: [0, 2] vs [0, -3] -> cos = -1;
    # token 3 is padding.
    student = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [GARBAGE, 1.0]]])
    teacher = torch.tensor([[[1.0, 1.0], [0.0, -3.0], [-1.0, GARBAGE]]])
    expected = ((1 - 1 / math.sqrt(2)) + 2) / 2
    check(build_loss("hidden_cosine")(student, teacher, torch.tensor([[1, 1, 0]])), expected)


@case("attention_mse")
def test_attention_mse_hand_computed():
    # L = mean over heads and real (query, key) pairs of (A_s - A_t)^2            (TinyBERT, Eq. 7)
    # One head, 2 tokens: every entry differs by 1/2 -> 1/4.
    student = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])
    teacher = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
    check(build_loss("attention_mse")(student, teacher), 0.25)
    # Second token padded: only the (0, 0) entry is left: (0.5 - 1)^2.
    check(build_loss("attention_mse")(student, teacher, torch.tensor([[1, 0]])), 0.25)
    # TinyBERT's scores with the additive -10000 mask: entries <= -100 count as 0 on both sides,
    # s = [[2, 0], [1, 0]], t = [[1, 0], [1, 0]] -> (1 + 0 + 0 + 0) / 4.
    student = torch.tensor([[[[2.0, -1e4], [1.0, -1e4]]]])
    teacher = torch.tensor([[[[1.0, -1e4], [1.0, -1e4]]]])
    check(build_loss("attention_mse")(student, teacher), 0.25)


@case("pkd")
def test_pkd_hand_computed():
    # L = mean over samples, layers, features of (h_s/|h_s| - h_t/|h_t|)^2 at position 0   (Eq. 4)
    # layer 1: [3, 4] -> [0.6, 0.8] vs [0, 2] -> [0, 1]: 0.36 + 0.04; layer 2: [1, 0] vs [5, 0]: 0.
    # Mean over 1 sample x 2 layers x 2 features: 0.4 / 4. Position 1 is never looked at.
    student = [t([[3.0, 4.0], [GARBAGE, 0.0]]), t([[1.0, 0.0], [0.0, GARBAGE]])]
    teacher = [t([[0.0, 2.0], [1.0, 1.0]]), t([[5.0, 0.0], [-GARBAGE, 0.0]])]
    check(build_loss("pkd")(student, teacher), 0.1)


def _kl_to_e_row() -> float:
    """KL([1/2, 1/2] || softmax([0, 1]))."""
    return kl([0.5, 0.5], softmax([0.0, 1.0]))


@case("minilm")
def test_minilm_hand_computed():
    # L = L_AT + L_VR, each 1/(A |x|) sum_a sum_t KL(teacher row || student row)   (MiniLM, Eq. 6-8)
    # One head, two tokens. Attention: teacher rows [1/2, 1/2] and [1/4, 3/4], student rows both
    # [1/4, 3/4]: L_AT = (KL([1/2, 1/2] || [1/4, 3/4]) + 0) / 2.
    # Values (width 1, d_k = 1): teacher v = [0, 0] -> scores 0 -> rows [1/2, 1/2]; student v = [0, 1]
    # -> scores [[0, 0], [0, 1]] -> rows [1/2, 1/2] and softmax([0, 1]): L_VR = (0 + KL(...)) / 2.
    att_t = torch.tensor([[[[0.5, 0.5], [0.25, 0.75]]]])
    att_s = torch.tensor([[[[0.25, 0.75], [0.25, 0.75]]]])
    v_t, v_s = torch.tensor([[[0.0], [0.0]]]), torch.tensor([[[0.0], [1.0]]])
    l_at = kl([0.5, 0.5], [0.25, 0.75]) / 2
    l_vr = _kl_to_e_row() / 2
    check(build_loss("minilm")([att_s, v_s], [att_t, v_t]), l_at + l_vr)


@case("minilm")
def test_minilmv2_hand_computed():
    # MiniLMv2: the same relation KL for Q-Q, K-K and V-V with one relation head, summed (Eq. 5-8).
    # Each student vector [0, 1] against teacher [0, 0] gives (0 + KL([1/2, 1/2] || softmax([0, 1]))) / 2.
    # A padded third token (garbage) changes nothing.
    student = [torch.tensor([[[0.0], [1.0], [GARBAGE]]]) for _ in range(3)]
    teacher = [torch.tensor([[[0.0], [0.0], [-GARBAGE]]]) for _ in range(3)]
    got = build_loss("minilm", relation_heads=1)(student, teacher, torch.tensor([[1, 1, 0]]))
    check(got, 3 * _kl_to_e_row() / 2)


# ============================================================================= detection losses
DET_NO_BOXES = (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))


@case("fgd")
def test_fgd_hand_computed():
    # L = alpha L_fg + beta L_bg + gamma L_at + lambda L_gl   (FGD), GcBlocks at initialisation
    # (the identity: last conv zero), so L_gl = sum (s - t)^2 / B.
    # Case 1: one image, 2 channels, a 1 x 4 map; teacher all 1, student entries +-1: every |value| is
    # 1, so both attentions are uniform (A^S = A^C = 1) on both sides and L_at = 0. Squared errors,
    # summed over channels, per cell: [4, 0, 0, 4]. The box x in [0, 0.25] covers cells
    # floor(0 * 4) .. ceil(0.25 * 4) = 0..1 and rows 0..ceil(1 * 1) = 0..1 (both ends included, as the
    # official code rounds), so its cells weigh 1 / (2 * 2) = 1/4: M^fg = [1/4, 1/4, 0, 0]; the two
    # background cells weigh 1/2. L_fg = 4/4 = 1, L_bg = 4/2 = 2, L_gl = 8.
    teacher = torch.ones(1, 2, 1, 4)
    student = torch.tensor([[[[-1.0, 1.0, 1.0, -1.0]], [[1.0, 1.0, 1.0, 1.0]]]])
    loss = build_loss("fgd", alpha=1.0, beta=10.0, gamma=100.0, lambda_=1000.0)
    loss.build(student, teacher)
    box = torch.tensor([[0.0, 0.0, 0.25, 1.0]])
    check(loss(student, teacher, box, torch.tensor([0])), 1 + 10 * 2 + 100 * 0 + 1000 * 8)
    # Case 2: no boxes, T = 1, a 1 x 2 map, both channels [0, ln 3] against a teacher of 1s.
    # Student spatial attention 2 softmax([0, ln 3]) = [1/2, 3/2] vs the teacher's [1, 1]: L_at = 1
    # (channel attentions are equal). Errors per cell (2 channels): [2, 2 d], d = (ln 3 - 1)^2; all
    # background, 1/2 each: L_bg = 1 + d; L_gl = 2 + 2 d.
    teacher = torch.ones(1, 2, 1, 2)
    student = torch.tensor([[[[0.0, LN3]], [[0.0, LN3]]]])
    loss = build_loss("fgd", temperature=1.0, alpha=1.0, beta=1.0, gamma=1.0, lambda_=1.0)
    loss.build(student, teacher)
    d = (LN3 - 1) ** 2
    check(loss(student, teacher, *DET_NO_BOXES), (1 + d) + 1 + (2 + 2 * d))


@case("fgfi")
def test_fgfi_hand_computed():
    # L = sum I (s - t)^2 / (2 sum I)   (FGFI, the authors' normalisation)
    # A 2 x 2 map; the box [0, 0, 0.5, 0.5] holds only the centre (0.25, 0.25) of cell (0, 0):
    # errors there (3 - 1)^2 + (1 - 0)^2 = 5 over 2 * 1 cells. Other cells hold garbage.
    student = torch.tensor([[[[3.0, GARBAGE], [GARBAGE, GARBAGE]], [[1.0, 0.0], [0.0, 0.0]]]])
    teacher = torch.tensor([[[[1.0, 0.0], [-GARBAGE, 0.0]], [[0.0, GARBAGE], [0.0, 0.0]]]])
    box = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    check(build_loss("fgfi")(student, teacher, box, torch.tensor([0])), 2.5)
    check(build_loss("fgfi")(student, teacher, *DET_NO_BOXES), 0.0)


@case("score_kd")
def test_score_kd_hand_computed():
    # l = BCE(sigmoid(z_s), sigmoid(z_t)), summed over classes, averaged over anchors
    # One class, two anchors. Anchor 1: p_s = sigmoid(ln 3) = 3/4, p_t = 1/2:
    #   -(1/2 ln 3/4 + 1/2 ln 1/4) = 2 ln 2 - ln(3) / 2. Anchor 2: p_s = 1/2, p_t = 3/4: ln 2.
    student = torch.tensor([[[LN3, 0.0]]])
    teacher = torch.tensor([[[0.0, LN3]]])
    first, second = 2 * LN2 - LN3 / 2, LN2
    check(build_loss("score_kd")(student, teacher), (first + second) / 2)
    # teacher-weighted: w = max_c p_t = [1/2, 3/4]
    check(
        build_loss("score_kd", teacher_weighted=True)(student, teacher),
        (0.5 * first + 0.75 * second) / 1.25,
    )
    # beta = 2 multiplies by |p_s - p_t|^2 = 1/16 on both anchors
    check(build_loss("score_kd", beta=2.0)(student, teacher), (first + second) / 2 / 16)


@case("ld")
def test_ld_hand_computed():
    # l = T^2 / reg_max KL(softmax(t/T) || softmax(s/T)) per side, averaged over the 4 sides (LD)
    # reg_max = 2, one anchor: side 0 teacher [0, 0] -> [1/2, 1/2], student [0, ln 3] -> [1/4, 3/4];
    # the other three sides agree. L = KL / 2 / 4.
    student = torch.tensor([0.0, LN3, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]).view(1, 8, 1)
    teacher = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]).view(1, 8, 1)
    expected = kl([0.5, 0.5], [0.25, 0.75]) / 2 / 4
    check(build_loss("ld", temperature=1.0)(student, teacher), expected)
    # T = 2 on doubled logits: the same distributions, times T^2 = 4
    check(build_loss("ld", temperature=2.0)(2 * student, 2 * teacher), 4 * expected)


# ----------------------------------------------------------------------------- language models
# One sequence of two positions over a 3-token vocabulary; the second position is ignored (label -100)
# and holds garbage, so every value below is the first position's alone.
LM_STUDENT = [0.0, 1.0, -1.0]
LM_TEACHER = [1.0, 0.0, 0.5]


def _lm_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    student = torch.tensor([[LM_STUDENT, [9.0, -9.0, 3.0]]])
    teacher = torch.tensor([[LM_TEACHER, [-5.0, 5.0, 0.0]]])
    return student, teacher, torch.tensor([[2, -100]])


def _mix(a: list[float], b: list[float], wa: float) -> list[float]:
    return [wa * x + (1 - wa) * y for x, y in zip(a, b, strict=True)]


@case("forward_kl")
@case("reverse_kl")
@case("generalized_jsd")
@case("symmetric_kl")
@case("skew_kl")
@case("skew_reverse_kl")
@case("tvd")
def test_lm_token_divergences_at_one_position():
    s, t_, labels = _lm_inputs()
    ps, pt = softmax(LM_STUDENT), softmax(LM_TEACHER)
    m = _mix(pt, ps, 0.3)  # GKD's mixture: beta * p_T + (1 - beta) * p_S
    expected = {
        ("forward_kl", ()): kl(pt, ps),
        ("reverse_kl", ()): kl(ps, pt),
        ("generalized_jsd", (("beta", 0.3),)): 0.3 * kl(pt, m) + 0.7 * kl(ps, m),
        ("symmetric_kl", (("ratio", 0.25),)): 0.25 * kl(pt, ps) + 0.75 * kl(ps, pt),
        ("skew_kl", (("alpha", 0.1),)): kl(pt, _mix(pt, ps, 0.1)),
        ("skew_reverse_kl", (("alpha", 0.1),)): kl(ps, _mix(ps, pt, 0.1)),
        ("tvd", ()): 0.5 * sum(abs(a - b) for a, b in zip(pt, ps, strict=True)),
    }
    for (name, options), value in expected.items():
        check(build_loss(name, **dict(options))(s, t_, labels), value)
    # temperature 2 divides both logits by 2 (no T^2 factor)
    halved = kl(softmax([x / 2 for x in LM_TEACHER]), softmax([x / 2 for x in LM_STUDENT]))
    check(build_loss("forward_kl", temperature=2.0)(s, t_, labels), halved)


@case("topk_kl")
@case("topk_jsd")
@case("topk_tvd")
def test_lm_top_k_losses_with_the_two_missing_mass_rules():
    """Teacher top-2 of the 3 tokens (ids 0 and 2) with its exact rest; the student's full softmax."""
    s, t_, labels = _lm_inputs()
    ps, pt = softmax(LM_STUDENT), softmax(LM_TEACHER)
    top = [math.log(pt[0]), math.log(pt[2])]
    teacher = [
        torch.tensor([[top, [0.0, 0.0]]]),
        torch.tensor([[[0, 2], [0, 1]]]),
        torch.tensor([[pt[1], 0.0]]),
    ]
    # tail bucket: (p0, p2, rest) against the student's (p0, p2, p1)
    tail_t, tail_s = [pt[0], pt[2], pt[1]], [ps[0], ps[2], ps[1]]
    # renormalise: the teacher's top-2 scaled to 1, rest 0 (0 log 0 = 0)
    z = pt[0] + pt[2]
    ren_t = [pt[0] / z, pt[2] / z, 0.0]
    m = _mix(ren_t, tail_s, 0.5)
    cases = [
        ("topk_kl", "tail_bucket", kl(tail_t, tail_s)),
        ("topk_kl", "renormalise", kl(ren_t, tail_s)),
        ("topk_jsd", "renormalise", 0.5 * kl(ren_t, m) + 0.5 * kl(tail_s, m)),
        (
            "topk_tvd",
            "renormalise",
            0.5 * sum(abs(a - b) for a, b in zip(ren_t, tail_s, strict=True)),
        ),
        (
            "topk_tvd",
            "tail_bucket",
            0.5 * sum(abs(a - b) for a, b in zip(tail_t, tail_s, strict=True)),
        ),
    ]
    for name, missing, value in cases:
        check(build_loss(name, missing=missing)(s, teacher, labels), value)


@case("sampled_reverse_kl")
def test_lm_sampled_reverse_kl_on_one_sampled_token():
    """L = -(log p_T(y) - log p_S(y)) * log p_S(y) for the sampled token y = 2."""
    s, t_, labels = _lm_inputs()
    lps, lpt = math.log(softmax(LM_STUDENT)[2]), math.log(softmax(LM_TEACHER)[2])
    check(build_loss("sampled_reverse_kl")(s, t_, labels), -(lpt - lps) * lps)


@case("uld")
def test_lm_uld_sorts_and_pads():
    """Student over 3 tokens, teacher over 2: sorted probabilities, the teacher's padded with 0."""
    s, _, labels = _lm_inputs()
    teacher = torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])
    ps = sorted(softmax(LM_STUDENT), reverse=True)
    pt = sorted(softmax([0.0, 1.0]), reverse=True) + [0.0]
    check(
        build_loss("uld")(s, teacher, labels), sum(abs(a - b) for a, b in zip(ps, pt, strict=True))
    )


@case("aligned_kl")
def test_lm_aligned_kl_keys_renormalises_and_sorts_the_rest():
    """Student tokens a, b, q; teacher tokens a, ab, x over a second position aligned to the first: the
    teacher's a and ab both count under a; q and x start with nothing shared (ULD on them); the sum over
    the one aligned position is divided by the two valid student targets."""
    s = torch.tensor([[[9.0, 9.0, 9.0], LM_STUDENT]])
    teacher = torch.tensor([[[0.0, 0.0, 0.0], [0.5, -1.0, 1.5]]])
    ps, pt = softmax(LM_STUDENT), softmax([0.5, -1.0, 1.5])
    qs = [ps[0] / (ps[0] + ps[1]), ps[1] / (ps[0] + ps[1])]  # a, b given a shared start
    qt = [1.0, 0.0]  # the teacher's a and ab are both "starts with a"; it has no b
    expected = (kl(qt, qs) + abs(ps[2] - pt[2])) / 2
    loss = build_loss("aligned_kl")(
        s, teacher, torch.tensor([[0, 1]]), torch.tensor([[-1, 1]]),
        torch.tensor([0, 1, -1]), torch.tensor([0, 0, -1]),
    )  # fmt: skip
    check(loss, expected)


@case("marginal_kl")
def test_lm_marginal_kl_adds_continuing_tokens_to_the_prefix_tokens_share():
    """Teacher tokens a, ab, b; student characters a, b. Position 1 has read "a" since the teacher's row
    0: the teacher's next character there is b through "ab", or what follows the token "a" (the
    teacher's row 1, keyed, as the token "a" does end there)."""
    s = torch.tensor([[[0.0, 0.0], [0.3, -0.4]]])
    teacher = torch.tensor([[[0.2, 0.9, -0.5], [1.0, -2.0, 0.5]]])
    p0, p1, ps = softmax([0.2, 0.9, -0.5]), softmax([1.0, -2.0, 0.5]), softmax([0.3, -0.4])
    after = [p1[0] + p1[1], p1[2]]  # row 1 keyed by first character: a and ab count as a
    target = [p0[0] * after[0], p0[1] + p0[0] * after[1]]
    target = [x / sum(target) for x in target]
    loss = build_loss("marginal_kl")(
        s, teacher, torch.tensor([[0, 1]]), torch.tensor([[-1, 0]]), torch.tensor([[-1, 0]]),
        torch.tensor([[0, 1]]), torch.tensor([0, 0, 1]),
        torch.tensor([[-1, 1, -1], [-1, -1, -1], [-1, -1, -1]]), torch.tensor([0, 1, 2]),
    )  # fmt: skip
    check(loss, kl(target, ps) / 2)
