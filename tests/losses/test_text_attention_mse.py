"""TinyBERT attention transfer. The reference transcribes the attention loop of the authors' task
distillation (huawei-noah/Pretrained-Language-Model, TinyBERT/task_distill.py: ``torch.where(att <= -1e2,
0, att)`` on both sides, then ``att_loss += loss_mse(student_att, teacher_att)`` per mapped layer) and
is fed TinyBERT's own inputs, unnormalised scores carrying BERT's additive -10000 padding mask; with no
``attention_mask`` given (every entry counted, as the reference does) values and gradients must agree.
Properties: with HF probabilities and an ``attention_mask``, padded queries and keys are left out (the
value equals the MSE over each sequence's real block), and unequal head counts are refused naming both."""

from __future__ import annotations

import pytest
import torch
from torch.nn import MSELoss

from distill.errors import DistillError
from distill.losses import build_loss


def _reference(student_atts, teacher_atts):
    loss_mse = MSELoss()
    att_loss = 0.0
    for student_att, teacher_att in zip(student_atts, teacher_atts, strict=True):
        student_att = torch.where(student_att <= -1e2, torch.zeros_like(student_att), student_att)
        teacher_att = torch.where(teacher_att <= -1e2, torch.zeros_like(teacher_att), teacher_att)
        tmp_loss = loss_mse(student_att, teacher_att)
        att_loss += tmp_loss
    return att_loss


LENGTHS = torch.tensor([6, 3, 5])


def _mask(length=6):
    return (torch.arange(length)[None] < LENGTHS[:, None]).long()


def _scores(seed, heads=2, length=6, layers=2):
    """Unnormalised attention scores with BERT's additive mask ((1 - mask) * -10000) on padded keys."""
    g = torch.Generator().manual_seed(seed)
    additive = (1.0 - _mask(length)[:, None, None, :].float()) * -10000.0
    return [torch.randn(3, heads, length, length, generator=g) + additive for _ in range(layers)]


def test_parity_with_tinybert_on_masked_scores_values_and_gradients():
    student, teacher = _scores(0), _scores(1)
    ours_in = [s.clone().requires_grad_() for s in student]
    ref_in = [s.clone().requires_grad_() for s in student]
    ours = build_loss("attention_mse")(ours_in, teacher)
    ref = _reference(ref_in, teacher)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    for a, b in zip(ours_in, ref_in, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_with_a_mask_only_the_real_block_of_each_sequence_counts():
    student = [x.softmax(-1) for x in _scores(2, layers=1)]
    teacher = [x.softmax(-1) for x in _scores(3, layers=1)]
    s, t = student[0], teacher[0]
    blocks = [((s[b, :, :n, :n] - t[b, :, :n, :n]) ** 2).flatten() for b, n in enumerate(LENGTHS)]
    expected = torch.cat(blocks).mean()
    torch.testing.assert_close(build_loss("attention_mse")(s, t, _mask()), expected)


def test_head_counts_must_match():
    s = torch.rand(2, 4, 5, 5)
    t = torch.rand(2, 12, 5, 5)
    with pytest.raises(DistillError, match="student has 4 attention heads but the teacher has 12"):
        build_loss("attention_mse")(s, t)
    with pytest.raises(DistillError, match=r"\(B, heads, T, T\)"):
        build_loss("attention_mse")(s[:, 0], t[:, 0])
