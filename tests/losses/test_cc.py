"""CC (Peng et al. 2019). The paper's authors published no code; the reference below transcribes
torchdistill's ``CCKDLoss`` kernel (``compute_cc_mat_by_gaussian_rbf`` / ``compute_cc_mat_by_bilinear_pool``,
torchdistill/losses/mid_level.py) applied to L2-normalised embeddings, with the paper's squared norm over
n^2 (torchdistill takes the unsquared norm; RepDistiller's ``Correlation`` is a different formula, see
the module docstring). Properties: the Taylor series converges to the exact Gaussian RBF kernel on unit
vectors, and the loss depends on the teacher's features only through their directions' correlations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import build_loss
from distill.losses.cc import correlation_matrix


# ---- reference: torchdistill CCKDLoss kernels, verbatim up to names
def _ref_gaussian_rbf(linear_outputs, gamma, max_p):
    row_list = []
    for linear_output in linear_outputs:
        row = 1
        right_term = torch.matmul(linear_output, torch.t(linear_outputs))
        for p in range(1, max_p + 1):
            left_term = ((2 * gamma) ** p) / (math.factorial(p))
            row += left_term * (right_term**p)
        row *= math.exp(-2 * gamma)
        row_list.append(row.squeeze(0))
    return torch.stack(row_list)


def _ref_cc(student, teacher, kernel="gaussian", gamma=0.4, max_p=2):
    s, t = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    if kernel == "bilinear":
        cc_s, cc_t = s @ s.t(), t @ t.t()
    else:
        cc_s, cc_t = _ref_gaussian_rbf(s, gamma, max_p), _ref_gaussian_rbf(t, gamma, max_p)
    return torch.dist(cc_s, cc_t, 2) ** 2 / student.shape[0] ** 2  # the paper squares the norm


def _inputs(seed=0, b=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 16, generator=g), torch.randn(b, 40, generator=g)


@pytest.mark.parametrize(
    "options", [{}, {"gamma": 1.3, "order": 4}, {"kernel": "bilinear"}], ids=str
)
def test_parity_with_torchdistill_kernels_without_embedding(options):
    student, teacher = _inputs()
    loss = build_loss("cc", embed_dim=0, **options)
    ref = _ref_cc(
        student,
        teacher,
        options.get("kernel", "gaussian"),
        options.get("gamma", 0.4),
        options.get("order", 2),
    )
    torch.testing.assert_close(loss(student, teacher), ref)


def test_embedding_is_a_trainable_linear_head_built_from_the_example_shapes():
    student, teacher = _inputs(1)
    torch.manual_seed(0)
    loss = build_loss("cc")  # embed_dim = 128
    with pytest.raises(RuntimeError, match="build"):
        loss(student, teacher)
    loss.build(student, teacher)
    assert isinstance(loss.embed, torch.nn.Linear)
    assert (loss.embed.in_features, loss.embed.out_features) == (16, 128)
    with torch.no_grad():
        ref = _ref_cc(loss.embed(student), teacher)
    value = loss(student, teacher)
    torch.testing.assert_close(value, ref)
    value.backward()
    assert loss.embed.weight.grad is not None and loss.embed.weight.grad.abs().sum() > 0
    # maps are flattened
    maps = torch.randn(12, 2, 2, 2)
    loss2 = build_loss("cc", embed_dim=4)
    loss2.build(maps, teacher)
    assert loss2.embed.in_features == 8 and torch.isfinite(loss2(maps, teacher))


def test_taylor_series_converges_to_the_gaussian_rbf_on_unit_vectors():
    x = F.normalize(torch.randn(7, 5, dtype=torch.float64), dim=1)
    exact = torch.exp(-0.4 * torch.cdist(x, x).pow(2))
    approx = correlation_matrix(x, "gaussian", gamma=0.4, order=12)
    torch.testing.assert_close(approx, exact, rtol=1e-9, atol=1e-9)
    # P = 2 is within 0.05 (worst on the diagonal, where x . y = 1)
    assert (correlation_matrix(x, "gaussian", 0.4, 2) - exact).abs().max() < 0.05


def test_depends_on_the_teacher_only_through_its_correlations():
    student, teacher = _inputs(2)
    g = torch.Generator().manual_seed(3)
    rotation, _ = torch.linalg.qr(torch.randn(40, 40, generator=g))
    scale = torch.rand(12, 1, generator=g) * 5 + 0.1  # per sample: the embeddings are normalised
    loss = build_loss("cc", embed_dim=0)
    torch.testing.assert_close(loss(student, scale * teacher @ rotation), loss(student, teacher))
    # a student that is a rescaled, rotated copy of the teacher has the same correlations: loss 0
    assert float(loss(3.0 * teacher @ rotation, teacher)) < 1e-10


def test_teacher_gets_no_gradient():
    student, teacher = _inputs(4)
    s, t = student.requires_grad_(), teacher.requires_grad_()
    loss = build_loss("cc")
    loss.build(s, t)
    loss(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


@pytest.mark.parametrize(
    "options, match",
    [
        ({"kernel": "rbf"}, "kernel must be one of"),
        ({"gamma": 0}, "gamma must be > 0"),
        ({"order": 0}, "order must be an int >= 1"),
        ({"embed_dim": -1}, "embed_dim must be an int >= 0"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        build_loss("cc", **options)
