"""Forward KL for language models: Hinton et al., "Distilling the Knowledge in a Neural Network", 2015,
applied per token as in sequence-level and token-level LM distillation (Kim & Rush, EMNLP 2016; the
``forward`` divergence of torchtune's KD recipes and TRL's GKD at beta = 0).

For every valid position (label not ``-100``) of logits ``(B, T, V)``:

    KL(p_T || p_S) = sum_v p_T(v) (log p_T(v) - log p_S(v)),   p = softmax(logits / temperature)

averaged over the valid tokens (``docs/lm.md``: the trainer turns the per-micro-batch means into the
step's global per-token mean). Mode-covering: the student spreads mass over everything the teacher
allows. Unlike torchtune's ``ForwardKLLoss``, which returns the cross-entropy ``-sum p_T log p_S``, this
is the divergence itself (0 at identity); the two differ by the teacher's entropy and have the same
gradient. Computed in float32; ``-inf`` logits (masked entries) count as probability 0.
"""

from __future__ import annotations

import torch

from distill.losses import LOSSES
from distill.losses._lm import TokenLoss, kl_rows, token_divergence


def forward_kl_per_token(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor
) -> torch.Tensor:
    """``KL(p_T || p_S)`` per row of ``(N, V)`` log-probabilities."""
    return kl_rows(teacher_log_probs, student_log_probs)


def forward_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Mean ``KL(p_T || p_S)`` over the valid positions of ``(B, T, V)`` logits."""
    return token_divergence(
        forward_kl_per_token,
        student_logits,
        teacher_logits,
        labels,
        temperature,
        vocab_size,
        "forward_kl",
    )


@LOSSES.register(
    "forward_kl",
    paper="Hinton et al., Distilling the Knowledge in a Neural Network (per token, for LMs)",
    year=2015,
    kind="logit",
    consumes="next-token logits + labels (-100 ignored)",
    inputs="token_logits",
    identity="zero",
    taps="@logits",
    weight="1 next to the task loss (0.5 each is common)",
)
class ForwardKLLoss(TokenLoss):
    """Token-level forward KL ``KL(p_T || p_S)``, mean over valid tokens."""

    name = "forward_kl"

    def per_token(
        self, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor
    ) -> torch.Tensor:
        return forward_kl_per_token(student_log_probs, teacher_log_probs)
