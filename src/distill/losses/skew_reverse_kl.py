"""Skew reverse KL: Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models",
ICML 2024.

For every valid position (label not ``-100``), ``p = softmax(logits / temperature)``:

    SRKL(alpha) = KL(p_S || (1 - alpha) * p_T + alpha * p_S)

``alpha = 0`` is ``reverse_kl``. Paper default ``alpha = 0.1`` (the DistiLLM recipes' ``--skew-alpha``).
Averaged over the valid tokens; the value equals the authors' ``skewed_reverse_kl``
(``distillm/losses.py``), tested against a transcription. The mixture is taken in probability space
through ``logsumexp``; computed in float32, ``-inf`` logits count as probability 0.
"""

from __future__ import annotations

import torch

from distill.losses import LOSSES
from distill.losses._lm import (
    TokenLoss,
    check_fraction,
    kl_rows,
    mixture_log_probs,
    token_divergence,
)


def skew_reverse_kl_per_token(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, alpha: float = 0.1
) -> torch.Tensor:
    """``KL(p_S || (1 - alpha) p_T + alpha p_S)`` per row."""
    mixture = mixture_log_probs(student_log_probs, teacher_log_probs, alpha)
    return kl_rows(student_log_probs, mixture)


def skew_reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    alpha: float = 0.1,
    temperature: float = 1.0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Mean skew reverse KL over the valid positions of ``(B, T, V)`` logits."""

    def per_token(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return skew_reverse_kl_per_token(s, t, alpha)

    return token_divergence(
        per_token,
        student_logits,
        teacher_logits,
        labels,
        temperature,
        vocab_size,
        "skew_reverse_kl",
    )


@LOSSES.register(
    "skew_reverse_kl",
    paper="Ko et al., DistiLLM: Towards Streamlined Distillation for Large Language Models",
    year=2024,
    kind="logit",
    consumes="next-token logits + labels (-100 ignored)",
    inputs="token_logits",
    identity="zero",
    taps="@logits",
    weight="1 (DistiLLM trains on it with the LM loss)",
)
class SkewReverseKLLoss(TokenLoss):
    """DistiLLM's skew reverse KL per token, mean over valid tokens."""

    name = "skew_reverse_kl"

    def __init__(
        self, alpha: float = 0.1, temperature: float = 1.0, vocab_size: int | None = None
    ) -> None:
        super().__init__(temperature, vocab_size)
        self.alpha = check_fraction(self.name, "alpha", alpha, "DistiLLM uses 0.1")

    def per_token(
        self, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor
    ) -> torch.Tensor:
        return skew_reverse_kl_per_token(student_log_probs, teacher_log_probs, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, {super().extra_repr()}"
