"""Reverse KL for language models: Gu et al., "MiniLLM: Knowledge Distillation of Large Language
Models", ICLR 2024 (token-level form; also Agarwal et al.'s GKD at beta = 1 and torchtune's
``ReverseKLLoss``).

For every valid position (label not ``-100``) of logits ``(B, T, V)``:

    KL(p_S || p_T) = sum_v p_S(v) (log p_S(v) - log p_T(v)),   p = softmax(logits / temperature)

averaged over the valid tokens. Mode-seeking: the student puts its mass where the teacher is confident
rather than covering every mode, which suits small students and on-policy data. MiniLLM optimises the
sequence-level reverse KL with a policy gradient; this is the exact per-token divergence under the
data's prefixes (the on-policy sampled-token estimator is ``sampled_reverse_kl``). Computed in float32;
``-inf`` logits count as probability 0.
"""

from __future__ import annotations

import torch

from distill.losses import LOSSES
from distill.losses._lm import TokenLoss, kl_rows, token_divergence


def reverse_kl_per_token(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor
) -> torch.Tensor:
    """``KL(p_S || p_T)`` per row of ``(N, V)`` log-probabilities."""
    return kl_rows(student_log_probs, teacher_log_probs)


def reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Mean ``KL(p_S || p_T)`` over the valid positions of ``(B, T, V)`` logits."""
    return token_divergence(
        reverse_kl_per_token,
        student_logits,
        teacher_logits,
        labels,
        temperature,
        vocab_size,
        "reverse_kl",
    )


@LOSSES.register(
    "reverse_kl",
    paper="Gu et al., MiniLLM: Knowledge Distillation of Large Language Models (token-level reverse KL)",
    year=2024,
    kind="logit",
    consumes="next-token logits + labels (-100 ignored)",
    inputs="token_logits",
    identity="zero",
    taps="@logits",
    weight="1 next to the task loss",
)
class ReverseKLLoss(TokenLoss):
    """Token-level reverse KL ``KL(p_S || p_T)``, mean over valid tokens."""

    name = "reverse_kl"

    def per_token(
        self, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor
    ) -> torch.Tensor:
        return reverse_kl_per_token(student_log_probs, teacher_log_probs)
