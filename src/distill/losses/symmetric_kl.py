"""Symmetric KL for language models: the Jeffreys divergence (Jeffreys, "An invariant form for the prior
probability in estimation problems", 1946), per token, in the weighted form of torchtune's
``SymmetricKLLoss`` (``sym_kd_ratio``).

For every valid position (label not ``-100``), ``p = softmax(logits / temperature)``:

    L = ratio * KL(p_T || p_S) + (1 - ratio) * KL(p_S || p_T)

``ratio = 0.5`` (torchtune's default) is half the Jeffreys divergence; ``ratio = 1`` is ``forward_kl``,
``0`` is ``reverse_kl``. Averaged over the valid tokens. torchtune's forward half is the cross-entropy
``-sum p_T log p_S``; here both halves are divergences (0 at identity, same gradient). Computed in float32;
``-inf`` logits count as probability 0.
"""

from __future__ import annotations

import torch

from distill.losses import LOSSES
from distill.losses._lm import TokenLoss, check_fraction, kl_rows, token_divergence


def symmetric_kl_per_token(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, ratio: float = 0.5
) -> torch.Tensor:
    """``ratio * KL(p_T || p_S) + (1 - ratio) * KL(p_S || p_T)`` per row."""
    forward = kl_rows(teacher_log_probs, student_log_probs)
    reverse = kl_rows(student_log_probs, teacher_log_probs)
    return ratio * forward + (1.0 - ratio) * reverse


def symmetric_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    ratio: float = 0.5,
    temperature: float = 1.0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Mean weighted symmetric KL over the valid positions of ``(B, T, V)`` logits."""

    def per_token(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return symmetric_kl_per_token(s, t, ratio)

    return token_divergence(
        per_token, student_logits, teacher_logits, labels, temperature, vocab_size, "symmetric_kl"
    )


@LOSSES.register(
    "symmetric_kl",
    paper="Jeffreys, An invariant form for the prior probability in estimation problems (symmetric KL; torchtune's weighted form)",
    year=1946,
    kind="logit",
    consumes="next-token logits + labels (-100 ignored)",
    inputs="token_logits",
    identity="zero",
    taps="@logits",
    weight="1 next to the task loss",
)
class SymmetricKLLoss(TokenLoss):
    """``ratio * forward KL + (1 - ratio) * reverse KL`` per token, mean over valid tokens."""

    name = "symmetric_kl"

    def __init__(
        self, ratio: float = 0.5, temperature: float = 1.0, vocab_size: int | None = None
    ) -> None:
        super().__init__(temperature, vocab_size)
        self.ratio = check_fraction(self.name, "ratio", ratio, "torchtune uses 0.5")

    def per_token(
        self, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor
    ) -> torch.Tensor:
        return symmetric_kl_per_token(student_log_probs, teacher_log_probs, self.ratio)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, {super().extra_repr()}"
