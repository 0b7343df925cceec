"""Skew KL: Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models", ICML 2024.

For every valid position (label not ``-100``), ``p = softmax(logits / temperature)``:

    SKL(alpha) = KL(p_T || alpha * p_T + (1 - alpha) * p_S)

The skew mixture keeps the divergence (and its gradient) bounded where the student gives a token almost
no mass; ``alpha = 0`` is ``forward_kl``. Paper default ``alpha = 0.1``. Averaged over the valid tokens.
The authors' ``skewed_forward_kl`` (``distillm/losses.py``) returns the cross-entropy
``-sum p_T log m``: the same gradient, larger by the teacher's entropy; here it is the divergence
itself (0 at identity). Both are tested against a transcription of that code. The mixture is taken in
probability space through ``logsumexp``; computed in float32, ``-inf`` logits count as probability 0.
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


def skew_kl_per_token(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, alpha: float = 0.1
) -> torch.Tensor:
    """``KL(p_T || alpha p_T + (1 - alpha) p_S)`` per row."""
    mixture = mixture_log_probs(teacher_log_probs, student_log_probs, alpha)
    return kl_rows(teacher_log_probs, mixture)


def skew_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    alpha: float = 0.1,
    temperature: float = 1.0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Mean skew KL over the valid positions of ``(B, T, V)`` logits."""

    def per_token(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return skew_kl_per_token(s, t, alpha)

    return token_divergence(
        per_token, student_logits, teacher_logits, labels, temperature, vocab_size, "skew_kl"
    )


@LOSSES.register(
    "skew_kl",
    paper="Ko et al., DistiLLM: Towards Streamlined Distillation for Large Language Models",
    year=2024,
    kind="logit",
    consumes="next-token logits + labels (-100 ignored)",
    inputs="token_logits",
    identity="zero",
    taps="@logits",
    weight="1 (DistiLLM trains on it with the LM loss)",
)
class SkewKLLoss(TokenLoss):
    """DistiLLM's skew KL per token, mean over valid tokens."""

    name = "skew_kl"

    def __init__(
        self, alpha: float = 0.1, temperature: float = 1.0, vocab_size: int | None = None
    ) -> None:
        super().__init__(temperature, vocab_size)
        self.alpha = check_fraction(self.name, "alpha", alpha, "DistiLLM uses 0.1")

    def per_token(
        self, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor
    ) -> torch.Tensor:
        return skew_kl_per_token(student_log_probs, teacher_log_probs, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, {super().extra_repr()}"
