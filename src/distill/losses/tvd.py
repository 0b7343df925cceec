"""Total variation distance for language models: Wen et al., "f-Divergence Minimization for
Sequence-Level Knowledge Distillation" (f-DISTILL), ACL 2023, per token (also DistillKit's dense
``tvd``).

For every valid position (label not ``-100``), ``p = softmax(logits / temperature)``:

    TVD = 1/2 * sum_v |p_T(v) - p_S(v)|

bounded in [0, 1] and symmetric. Averaged over the valid tokens. Computed in float32.
"""

from __future__ import annotations

import torch

from distill.losses import LOSSES
from distill.losses._lm import TokenLoss, token_divergence


def tvd_per_token(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """``1/2 sum_v |p_T - p_S|`` per row."""
    return 0.5 * (teacher_log_probs.exp() - student_log_probs.exp()).abs().sum(-1)


def tvd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Mean total variation distance over the valid positions of ``(B, T, V)`` logits."""
    return token_divergence(
        tvd_per_token, student_logits, teacher_logits, labels, temperature, vocab_size, "tvd"
    )


@LOSSES.register(
    "tvd",
    paper="Wen et al., f-Divergence Minimization for Sequence-Level Knowledge Distillation",
    year=2023,
    kind="logit",
    consumes="next-token logits + labels (-100 ignored)",
    inputs="token_logits",
    identity="zero",
    taps="@logits",
    weight="1 next to the task loss",
)
class TVDLoss(TokenLoss):
    """Token-level total variation distance, mean over valid tokens."""

    name = "tvd"

    def per_token(
        self, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor
    ) -> torch.Tensor:
        return tvd_per_token(student_log_probs, teacher_log_probs)
