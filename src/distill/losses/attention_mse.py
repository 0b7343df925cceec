"""Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding", Findings of EMNLP 2020.

Attention-based distillation: the student's attention matrices regress the teacher's, head by head,
for the mapped layers (paper Eq. 7), averaged over heads and over (query, key) pairs of real tokens:

    L_attn = 1/h sum_heads MSE(A_s, A_t)             A (B, heads, T, T)

TinyBERT compares the *unnormalised* attention scores ``Q K^T / sqrt(d)`` (before the softmax) and,
because padded keys carry the additive mask (-10000), first sets every entry ``<= -100`` to zero
(``TinyBERT/task_distill.py``: ``torch.where(att <= -1e2, 0, att)``). Hugging Face models return the
attention *probabilities* (after the softmax; ``@attentions.N`` of the text task), which is what this
loss gets from the text task; it applies the same ``<= -100 -> 0`` rule, so scores tapped elsewhere work
as in TinyBERT and probabilities pass unchanged. Entries whose query or key is padding are left out of
the mean (TinyBERT's ``MSELoss`` averages over all ``T x T`` entries; both agree without padding).

Student and teacher must have the same number of heads (as in TinyBERT). A list of taps sums the
per-layer losses, as the authors' loop does. Taps: ``@attentions.m`` against ``@attentions.g(m)`` with
TinyBERT's uniform mapping (0-based: teacher layer ``(m + 1) * L_t / L_s - 1``); weight 1 next to
``hidden_mse`` (TinyBERT adds them unweighted). With probabilities the values are small (entries are
at most 1, mostly near 1/T); a larger weight may suit a task loss. Attention dropout makes the
student's training-mode probabilities noisy: set the student's ``attention_probs_dropout_prob`` to 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import LOSSES
from distill.losses._common import Tensors, check_attentions, layer_pairs, token_mask
from distill.losses.base import DistillLoss

MASKED_SCORE = -1e2  # TinyBERT: entries at or below are the additive padding mask, compared as zero


def pair_mask(attention_mask: torch.Tensor | None, attentions: torch.Tensor) -> torch.Tensor | None:
    """``(B, 1, T, T)`` bool: query and key both real tokens (``None`` when every token is real)."""
    mask = token_mask(attention_mask, attentions.shape[0], attentions.shape[-1])
    return None if mask is None else (mask[:, None, :, None] & mask[:, None, None, :])


def attention_mse_loss(
    student_attentions: torch.Tensor,
    teacher_attentions: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between attention matrices ``(B, heads, T, T)`` over (query, key) pairs of real tokens."""
    check_attentions(student_attentions, teacher_attentions, "attention_mse")
    s = student_attentions.float()
    t = teacher_attentions.detach().float()
    s = torch.where(s <= MASKED_SCORE, torch.zeros_like(s), s)
    t = torch.where(t <= MASKED_SCORE, torch.zeros_like(t), t)
    mask = pair_mask(attention_mask, s)
    if mask is None:
        return F.mse_loss(s, t)
    mask = mask.expand_as(s)
    return F.mse_loss(s[mask], t[mask])


@LOSSES.register(
    "attention_mse",
    paper="Jiao et al., TinyBERT: Distilling BERT for Natural Language Understanding, Findings of EMNLP",
    year=2020,
    kind="feature",
    consumes="attention matrices (one or several layers, equal head counts)",
    inputs="attentions",
    identity="zero",
    taps='"@attentions.*" on both sides with layer_map uniform (TinyBERT), or single layers '
    "@attentions.m against @attentions.g(m)",
    weight="1 (TinyBERT adds attention and hidden-state losses unweighted)",
)
class AttentionMSELoss(DistillLoss):
    """TinyBERT's attention transfer on ``(B, heads, T, T)`` matrices (or lists of them, summed)."""

    extra_inputs = ("attention_mask",)
    needs_same_shape = False  # checked in build(): a projector cannot fix unequal head counts

    def build(self, student: Tensors, teacher: Tensors, **context: object) -> None:
        """Nothing to create; checks the example attentions (head counts) before training starts."""
        for s, t in layer_pairs(student, teacher, "attention_mse"):
            check_attentions(s, t, "attention_mse")

    def forward(
        self, student: Tensors, teacher: Tensors, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        total = None
        for s, t in layer_pairs(student, teacher, "attention_mse"):
            with torch.autocast(s.device.type, enabled=False):
                value = attention_mse_loss(s, t, attention_mask)
            total = value if total is None else total + value
        return total
