"""TinyBERT hidden-state / embedding MSE. The reference transcribes the authors' task-distillation step
(huawei-noah/Pretrained-Language-Model, TinyBERT/task_distill.py: one ``fit_dense = nn.Linear(d_s, d_t)``
applied to every student representation in ``TinyBertForSequenceClassification.forward``, then
``rep_loss += loss_mse(student_rep, teacher_rep)`` over the mapped layers with ``MSELoss()``); values and
gradients (student and ``W_h``) must agree on unpadded batches. Properties: padded tokens are left out
(the value equals the plain MSE over the real tokens only), equal widths need no map, and mismatched
layer lists or masks are refused with a one-line error."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import MSELoss

from distill.errors import DistillError
from distill.losses import build_loss


def _states(seed=0, b=3, length=5, d_s=8, d_t=12, layers=3):
    g = torch.Generator().manual_seed(seed)
    student = [torch.randn(b, length, d_s, generator=g) for _ in range(layers)]
    teacher = [torch.randn(b, length, d_t, generator=g) for _ in range(layers)]
    return student, teacher


def _reference(student_reps, teacher_reps, fit_dense):
    # TinyBERT: student_reps = [fit_dense(s) for s in sequence_output]; then the rep loop
    loss_mse = MSELoss()
    rep_loss = 0.0
    for student_rep, teacher_rep in zip(
        [fit_dense(s) for s in student_reps], teacher_reps, strict=True
    ):
        tmp_loss = loss_mse(student_rep, teacher_rep)
        rep_loss += tmp_loss
    return rep_loss


def test_parity_with_tinybert_rep_loss_values_and_gradients():
    student, teacher = _states()
    loss = build_loss("hidden_mse")
    loss.build(student, teacher)
    assert isinstance(loss.projector, nn.Linear) and loss.projector.bias is not None
    fit_dense = nn.Linear(8, 12)
    fit_dense.load_state_dict(loss.projector.state_dict())

    ours_in = [s.clone().requires_grad_() for s in student]
    ref_in = [s.clone().requires_grad_() for s in student]
    ours = loss(ours_in, teacher)
    ref = _reference(ref_in, teacher, fit_dense)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    for a, b in zip(ours_in, ref_in, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(loss.projector.weight.grad, fit_dense.weight.grad)
    torch.testing.assert_close(loss.projector.bias.grad, fit_dense.bias.grad)


def test_an_all_ones_mask_is_the_same_as_no_mask():
    student, teacher = _states(layers=1, d_t=8)
    loss = build_loss("hidden_mse")
    loss.build(student[0], teacher[0])
    ones = torch.ones(3, 5, dtype=torch.long)
    torch.testing.assert_close(loss(student[0], teacher[0], ones), loss(student[0], teacher[0]))


def test_padding_is_left_out_of_the_mean():
    """With padding the value is the MSE over the real tokens only, taken from each sequence."""
    student, teacher = _states(layers=1, d_t=8)
    s, t = student[0], teacher[0]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    loss = build_loss("hidden_mse")
    loss.build(s, t)
    assert isinstance(loss.projector, nn.Identity)  # equal widths: compared directly
    real_s = torch.cat([s[0, :5], s[1, :2], s[2, :1]])
    real_t = torch.cat([t[0, :5], t[1, :2], t[2, :1]])
    expected = ((real_s - real_t) ** 2).mean()
    torch.testing.assert_close(loss(s, t, mask), expected)


def test_embedding_loss_is_the_same_loss_on_the_embedding_outputs():
    """TinyBERT's L_embd = MSE(E_s W_e, E_t): a term on @hidden_states.0 with its own map."""
    student, teacher = _states(layers=1)
    embedding = build_loss("hidden_mse")
    embedding.build(student[0], teacher[0])
    with torch.no_grad():
        expected = ((embedding.projector(student[0]) - teacher[0]) ** 2).mean()
    torch.testing.assert_close(embedding(student[0], teacher[0]), expected)


def test_bad_inputs_are_refused_with_the_fix():
    student, teacher = _states()
    loss = build_loss("hidden_mse")
    with pytest.raises(DistillError, match="3 student layers but 2 teacher layers"):
        loss.build(student, teacher[:2])
    with pytest.raises(DistillError, match="build the loss"):
        loss(student[0], teacher[0])  # widths differ and W_h was never built
    loss.build(student, teacher)
    with pytest.raises(DistillError, match=r"attention_mask has shape \(3, 4\)"):
        loss(student[0], teacher[0], torch.ones(3, 4))
    with pytest.raises(DistillError, match="token states"):
        loss(student[0][:, 0], teacher[0][:, 0])
