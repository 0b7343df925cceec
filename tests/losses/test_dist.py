"""DIST (Huang et al. 2022) against a transcription of the authors' classification loss
(github.com/hunto/image_classification_sota, ``lib/models/losses/dist_kd.py``, the version with ``tau``,
as mirrored in github.com/zkxufo/TTM ``distiller_zoo/dist.py``), plus the relation-not-values property
the paper is built on."""

from __future__ import annotations

import pytest
import torch

from distill.losses import build_loss, kd_loss
from distill.losses.dist import DISTLoss, dist_loss


# ----------------------------------------------------------------------------- reference (official)
def _cosine_similarity(a, b, eps=1e-8):
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def _pearson_correlation(a, b, eps=1e-8):
    return _cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps)


def _inter_class_relation(y_s, y_t):
    return 1 - _pearson_correlation(y_s, y_t).mean()


def _intra_class_relation(y_s, y_t):
    return _inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


def reference_dist(z_s, z_t, beta=1.0, gamma=1.0, tau=1.0):
    y_s = (z_s / tau).softmax(dim=1)
    y_t = (z_t / tau).softmax(dim=1)
    inter_loss = tau**2 * _inter_class_relation(y_s, y_t)
    intra_loss = tau**2 * _intra_class_relation(y_s, y_t)
    return beta * inter_loss + gamma * intra_loss


def _inputs(seed=0, batch=16, classes=10):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(batch, classes, generator=g), 3 * torch.randn(
        batch, classes, generator=g
    )


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize(
    "beta, gamma, tau", [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0), (1.0, 0.0, 2.0), (0.0, 1.0, 1.0)]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_official(beta, gamma, tau, seed):
    s, t = _inputs(seed)
    got = DISTLoss(beta, gamma, tau)(s, t)
    torch.testing.assert_close(got, reference_dist(s, t, beta, gamma, tau), rtol=1e-5, atol=1e-6)


def test_defaults_are_the_papers():
    loss = build_loss("dist")
    assert (loss.beta, loss.gamma, loss.temperature, loss.standardize) == (1.0, 1.0, 1.0, False)


# ----------------------------------------------------------------------------- the paper's idea
def test_positive_affine_related_predictions_cost_nothing_though_kd_does():
    """DIST asks for the teacher's relations, not its values: a student whose probabilities are
    ``a * p_t + (1 - a) / C`` (a softer copy of the teacher) has zero DIST loss, but a positive KD loss."""
    _, t = _inputs(seed=2)
    classes = t.shape[1]
    softer = 0.3 * t.softmax(dim=1) + 0.7 / classes
    s = softer.log()  # softmax(log q) = q
    assert dist_loss(s, t).item() == pytest.approx(0.0, abs=1e-5)
    assert kd_loss(s, t, 1.0).item() > 0.05


def test_joint_permutations_leave_the_loss_unchanged():
    """The inter-class term is a mean over samples and the intra-class term a mean over classes."""
    s, t = _inputs(seed=3)
    base = dist_loss(s, t)
    rows, cols = torch.randperm(s.shape[0]), torch.randperm(s.shape[1])
    torch.testing.assert_close(dist_loss(s[rows], t[rows]), base)
    torch.testing.assert_close(dist_loss(s[:, cols], t[:, cols]), base)


def test_bounded_by_twice_the_weights():
    s, t = _inputs(seed=4)
    value = dist_loss(-t, t, beta=1.0, gamma=1.0)  # anti-correlated-ish
    assert 0.0 <= value.item() <= 4.0 + 1e-6


def test_bad_options():
    with pytest.raises(ValueError, match="temperature"):
        DISTLoss(temperature=0)
    with pytest.raises(ValueError, match="beta"):
        DISTLoss(beta=-1)
