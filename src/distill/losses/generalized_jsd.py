"""Generalized Jensen-Shannon divergence: Agarwal et al., "On-Policy Distillation of Language Models:
Learning from Self-Generated Mistakes" (GKD), ICLR 2024, Eq. (1), as TRL's ``GKDTrainer`` defines it.

For every valid position (label not ``-100``), with ``p = softmax(logits / temperature)`` and the
mixture ``m = beta * p_T + (1 - beta) * p_S`` taken in probability space (``logsumexp`` of the
log-probabilities, not a mixture of log-probabilities):

    JSD(beta) = beta * KL(p_T || m) + (1 - beta) * KL(p_S || m)        0 < beta < 1
    JSD(0)    = KL(p_T || p_S)   (forward KL)      JSD(1) = KL(p_S || p_T)   (reverse KL)

The end points are TRL's definitions (the mixture formula itself tends to 0 there). ``beta = 0.5`` is
the symmetric Jensen-Shannon divergence; the paper's default is 0.5. Averaged over the valid tokens
(TRL's ``batchmean`` with labels). Parity with ``trl.experimental.gkd.GKDTrainer.generalized_jsd_loss``
is tested live when ``trl`` is installed. Computed in float32; ``-inf`` logits count as probability 0
(TRL's ``F.kl_div`` gives NaN there).
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


def generalized_jsd_per_token(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, beta: float = 0.5
) -> torch.Tensor:
    """GKD's ``JSD(beta)`` per row of ``(N, V)`` log-probabilities."""
    if beta == 0.0:
        return kl_rows(teacher_log_probs, student_log_probs)
    if beta == 1.0:
        return kl_rows(student_log_probs, teacher_log_probs)
    mixture = mixture_log_probs(teacher_log_probs, student_log_probs, beta)
    return beta * kl_rows(teacher_log_probs, mixture) + (1.0 - beta) * kl_rows(
        student_log_probs, mixture
    )


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Mean ``JSD(beta)`` over the valid positions of ``(B, T, V)`` logits."""
    check_fraction("generalized_jsd", "beta", beta, "0 = forward KL, 1 = reverse KL, GKD uses 0.5")

    def per_token(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return generalized_jsd_per_token(s, t, beta)

    return token_divergence(
        per_token,
        student_logits,
        teacher_logits,
        labels,
        temperature,
        vocab_size,
        "generalized_jsd",
    )


@LOSSES.register(
    "generalized_jsd",
    paper="Agarwal et al., On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes (GKD)",
    year=2024,
    kind="logit",
    consumes="next-token logits + labels (-100 ignored)",
    inputs="token_logits",
    identity="zero",
    taps="@logits",
    weight="1 (GKD trains on this loss alone)",
)
class GeneralizedJSDLoss(TokenLoss):
    """GKD's generalized JSD(beta) per token, mean over valid tokens."""

    name = "generalized_jsd"

    def __init__(
        self, beta: float = 0.5, temperature: float = 1.0, vocab_size: int | None = None
    ) -> None:
        super().__init__(temperature, vocab_size)
        self.beta = check_fraction(
            self.name, "beta", beta, "0 = forward KL, 1 = reverse KL, GKD uses 0.5"
        )

    def per_token(
        self, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor
    ) -> torch.Tensor:
        return generalized_jsd_per_token(student_log_probs, teacher_log_probs, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, {super().extra_repr()}"
