"""DistilBERT cosine loss. The reference transcribes the ``alpha_cos`` block of Hugging Face's DistilBERT
training script (huggingface/transformers, examples/research_projects/distillation/distiller.py:
``masked_select`` of the states with the expanded ``attention_mask``, ``nn.CosineEmbeddingLoss(
reduction="mean")`` with a target of ones); values and gradients must agree on padded batches.
Properties: only directions count (positive per-token scale changes nothing), opposite states give 2,
and states of different widths ask for a projector."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.losses import build_loss


def _reference(s_hidden_states, t_hidden_states, attention_mask):
    cosine_loss_fct = nn.CosineEmbeddingLoss(reduction="mean")
    mask = attention_mask.unsqueeze(-1).expand_as(s_hidden_states).bool()  # (bs, seq_length, dim)
    assert s_hidden_states.size() == t_hidden_states.size()
    dim = s_hidden_states.size(-1)
    s_hidden_states_slct = torch.masked_select(s_hidden_states, mask)  # (bs * seq_length * dim)
    s_hidden_states_slct = s_hidden_states_slct.view(-1, dim)  # (bs * seq_length, dim)
    t_hidden_states_slct = torch.masked_select(t_hidden_states, mask)
    t_hidden_states_slct = t_hidden_states_slct.view(-1, dim)
    target = s_hidden_states_slct.new(s_hidden_states_slct.size(0)).fill_(1)  # (bs * seq_length,)
    return cosine_loss_fct(s_hidden_states_slct, t_hidden_states_slct, target)


def _states(seed=0, b=4, length=7, dim=12):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, length, dim, generator=g)
    t = torch.randn(b, length, dim, generator=g) + 0.5 * s  # partly aligned
    mask = (torch.arange(length)[None] < torch.tensor([7, 4, 1, 6])[:, None]).long()
    return s, t, mask


def test_parity_with_the_distilbert_script_values_and_gradients():
    s, t, mask = _states()
    ours_in, ref_in = s.clone().requires_grad_(), s.clone().requires_grad_()
    ours = build_loss("hidden_cosine")(ours_in, t, mask)
    ref = _reference(ref_in, t, mask)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad)


def test_only_directions_count():
    s, t, mask = _states(seed=1)
    loss = build_loss("hidden_cosine")
    scale = torch.rand(4, 7, 1) * 10 + 0.1  # a positive factor per token
    torch.testing.assert_close(loss(s * scale, t, mask), loss(s, t, mask))
    torch.testing.assert_close(loss(-t, t, mask), torch.tensor(2.0))
    assert float(loss(2 * t, t, mask)) == pytest.approx(0.0, abs=1e-6)


def test_different_widths_ask_for_a_projector():
    s, t, _ = _states()
    with pytest.raises(DistillError, match="projector: linear"):
        build_loss("hidden_cosine")(s[..., :8], t)
