"""MiniLM and MiniLMv2. The authors released no training code (microsoft/unilm, minilm/ holds only the
models), so the reference is ``_get_kl_loss`` of Bloomberg's MiniLMv2 port (bloomberg/minilmv2.bb,
minilmv2/minilmv2.py: per sequence, ``KLDivLoss(reduction="sum")`` of ``log_softmax`` of the student's
relation scores against ``softmax`` of the teacher's on the real ``[:len, :len]`` block, divided by
``heads * len``, then averaged over the batch), applied to the scaled dot products of the paper: Q K^T
(attention distributions, MiniLM Eq. 6), V V^T (value relation, Eq. 7) and MiniLMv2's Q-Q, K-K, V-V
relations split into relation heads. Our loss gets HF-style attention *probabilities* (softmax with the
additive padding mask); values and gradients must agree with the reference computed from the scores.
A tiny Hugging Face BERT checks that its ``output_attentions`` and value-module taps are what the loss
expects. Properties: KL >= 0 and 0 at identity, value relations blind to a rotation within each head,
and unequal head counts refused."""

from __future__ import annotations

import math

import pytest
import torch

from distill.errors import DistillError
from distill.losses import build_loss


def _reference_kl(rel_T, rel_S, attention_mask, A_r):  # noqa: N803 (the port's names)
    kl_loss_fn = torch.nn.KLDivLoss(reduction="sum")
    loss = 0.0
    batch_size = attention_mask.shape[0]
    seq_lengths = attention_mask.sum(-1).tolist()
    for b in range(batch_size):
        cur_seq_len = seq_lengths[b]
        R_L_T = torch.nn.Softmax(dim=-1)(rel_T[b, :, :cur_seq_len, :cur_seq_len])  # noqa: N806
        R_M_S = torch.nn.functional.log_softmax(  # noqa: N806
            rel_S[b, :, :cur_seq_len, :cur_seq_len], dim=-1
        )
        loss += kl_loss_fn(R_M_S.reshape(-1, cur_seq_len), R_L_T.reshape(-1, cur_seq_len)) / (
            A_r * cur_seq_len
        )
    loss /= batch_size
    return loss


def _heads(x, heads):
    b, t, h = x.shape
    return x.view(b, t, heads, h // heads).permute(0, 2, 1, 3)


def _scaled_dot(x, y, heads):
    xh, yh = _heads(x, heads), _heads(y, heads)
    return xh @ yh.transpose(-1, -2) / math.sqrt(xh.shape[-1])


LENGTHS = torch.tensor([6, 2, 4, 5])


def _qkv(seed, width, b=4, length=6):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, length, width, generator=g) for _ in range(3)]


def _mask(length=6):
    return (torch.arange(length)[None] < LENGTHS[:, None]).long()


def _probs(q, k, heads, mask):
    """What an HF eager attention returns: softmax of scores plus the additive padding mask."""
    additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    return (_scaled_dot(q, k, heads) + additive).softmax(-1)


def test_minilm_parity_with_the_reference_values_and_gradients():
    heads, mask = 2, _mask()
    q_s, k_s, v_s = _qkv(0, width=8)
    q_t, k_t, v_t = _qkv(1, width=16)
    q_s.requires_grad_()
    v_s.requires_grad_()
    ours = build_loss("minilm")(
        [_probs(q_s, k_s, heads, mask), v_s], [_probs(q_t, k_t, heads, mask), v_t], mask
    )
    grads = torch.autograd.grad(ours, [q_s, v_s])
    ref = _reference_kl(_scaled_dot(q_t, k_t, heads), _scaled_dot(q_s, k_s, heads), mask, heads)
    ref = ref + _reference_kl(
        _scaled_dot(v_t, v_t, heads), _scaled_dot(v_s, v_s, heads), mask, heads
    )
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads, torch.autograd.grad(ref, [q_s, v_s]), strict=True):
        torch.testing.assert_close(a, b)


def test_minilmv2_parity_with_the_reference_relations():
    """Q-Q, K-K, V-V relations with 4 relation heads; the teacher has a different width."""
    mask = _mask()
    student, teacher = _qkv(2, width=8), _qkv(3, width=24)
    student = [x.requires_grad_() for x in student]
    ours = build_loss("minilm", relation_heads=4)(student, teacher, mask)
    ref = sum(
        _reference_kl(_scaled_dot(t, t, 4), _scaled_dot(s, s, 4), mask, 4)
        for s, t in zip(student, teacher, strict=True)
    )
    torch.testing.assert_close(ours, ref)
    for a, b in zip(
        torch.autograd.grad(ours, student), torch.autograd.grad(ref, student), strict=True
    ):
        torch.testing.assert_close(a, b)


def test_kl_is_non_negative_zero_at_identity_and_blind_to_rotations_within_heads():
    heads, mask = 2, _mask()
    q, k, v = _qkv(4, width=8)
    loss = build_loss("minilm")
    probs = _probs(q, k, heads, mask)
    assert float(loss([probs, v], [probs, v], mask)) == pytest.approx(0.0, abs=1e-6)
    q2, k2, v2 = _qkv(5, width=8)
    assert float(loss([_probs(q2, k2, heads, mask), v2], [probs, v], mask)) > 0
    rotation = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(6)))[0]
    v_rotated = (_heads(v, heads) @ rotation).permute(0, 2, 1, 3).reshape(v.shape)
    assert float(loss([probs, v_rotated], [probs, v], mask)) == pytest.approx(0.0, abs=1e-5)


def test_bad_taps_are_refused():
    mask = _mask()
    q, k, v = _qkv(0, width=8)
    loss = build_loss("minilm")
    probs2, probs4 = _probs(q, k, 2, mask), _probs(q, k, 4, mask)
    with pytest.raises(DistillError, match="student has 2 attention heads but the teacher has 4"):
        loss([probs2, v], [probs4, v], mask)
    with pytest.raises(DistillError, match=r"list \[attentions, values\]"):
        loss(probs2, probs2, mask)
    with pytest.raises(DistillError, match="does not split into 3 heads"):
        build_loss("minilm", relation_heads=3)([q, k, v], [q, k, v], mask)
    with pytest.raises(ValueError, match="relation_heads must be a positive integer"):
        build_loss("minilm", relation_heads=0)


def test_hugging_face_attentions_and_value_taps_fit_the_loss():
    """A tiny random BERT: its returned attentions equal softmax(Q K^T / sqrt(d) + padding mask), and
    MiniLM on (attentions, value-module output) equals the reference built from its Q, K, V modules."""
    transformers = pytest.importorskip("transformers")
    from distill.taps import FeatureTaps

    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=8, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    student, teacher = transformers.BertModel(config).eval(), transformers.BertModel(config).eval()
    ids, mask = torch.randint(0, 40, (4, 6)), _mask()
    names = [f"encoder.layer.0.attention.self.{p}" for p in ("query", "key", "value")]

    def run(model):
        with torch.no_grad(), FeatureTaps(model, names) as taps:
            out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        return out.attentions[-1], [taps[n] for n in names]

    (att_s, (q_s, k_s, v_s)), (att_t, (q_t, k_t, v_t)) = run(student), run(teacher)
    torch.testing.assert_close(att_s, _probs(q_s, k_s, 2, mask))
    ours = build_loss("minilm")([att_s, v_s], [att_t, v_t], mask)
    ref = _reference_kl(_scaled_dot(q_t, k_t, 2), _scaled_dot(q_s, k_s, 2), mask, 2)
    ref = ref + _reference_kl(_scaled_dot(v_t, v_t, 2), _scaled_dot(v_s, v_s, 2), mask, 2)
    torch.testing.assert_close(ours, ref)
