"""Patient KD. The reference is ``patience_loss`` of the authors' code (intersun/PKD-for-BERT-Model-
Compression, src/KD_loss.py: ``F.normalize(..., p=2, dim=2)`` on the stacked ``(B, layers, D)`` [CLS]
states, then ``F.mse_loss``); values and gradients must agree, normalised or not. Properties: only
position 0 counts, normalised states ignore each state's (positive) scale, and unequal widths ask for
a projector."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses import build_loss


def _reference(teacher_patience, student_patience, normalized_patience=False):
    if normalized_patience:
        teacher_patience = F.normalize(teacher_patience, p=2, dim=2)
        student_patience = F.normalize(student_patience, p=2, dim=2)
    return F.mse_loss(teacher_patience.float(), student_patience.float())


def _layers(seed=0, b=4, length=5, dim=12, layers=3):
    g = torch.Generator().manual_seed(seed)
    student = [torch.randn(b, length, dim, generator=g) for _ in range(layers)]
    teacher = [3 * torch.randn(b, length, dim, generator=g) for _ in range(layers)]
    return student, teacher


@pytest.mark.parametrize("normalize", [True, False])
def test_parity_with_the_authors_patience_loss(normalize):
    student, teacher = _layers()
    ours_in = [s.clone().requires_grad_() for s in student]
    ref_in = torch.stack([s[:, 0] for s in student], dim=1).clone().requires_grad_()
    ours = build_loss("pkd", normalize=normalize)(ours_in, teacher)
    ref = _reference(torch.stack([t[:, 0] for t in teacher], dim=1), ref_in, normalize)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    for layer, s in enumerate(ours_in):
        torch.testing.assert_close(s.grad[:, 0], ref_in.grad[:, layer])
        assert not s.grad[:, 1:].any()  # only [CLS] is distilled


def test_normalised_states_ignore_scale_and_other_positions():
    student, teacher = _layers(seed=1)
    loss = build_loss("pkd")
    base = loss(student, teacher)
    scaled = [s * (torch.rand(4, 5, 1) * 5 + 0.1) for s in student]  # positive scale per token
    shuffled = [torch.cat([s[:, :1], torch.randn_like(s[:, 1:])], dim=1) for s in student]
    torch.testing.assert_close(loss(scaled, teacher), base)
    torch.testing.assert_close(loss(shuffled, teacher), base)
    torch.testing.assert_close(loss(student[0], teacher[0]), loss([student[0]], [teacher[0]]))


def test_unequal_widths_ask_for_a_projector():
    student, teacher = _layers()
    with pytest.raises(DistillError, match="projector: linear"):
        build_loss("pkd")([s[..., :8] for s in student], teacher)
    with pytest.raises(DistillError, match="2 teacher layers"):
        build_loss("pkd")(student, teacher[:2])
