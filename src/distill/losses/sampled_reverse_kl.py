"""Sampled-token reverse KL, the on-policy policy-gradient form: Agarwal et al., "On-Policy Distillation
of Language Models" (GKD), ICLR 2024, and Gu et al.'s MiniLLM (ICLR 2024), as Thinking Machines'
tinker-cookbook trains on-policy distillation ("On-Policy Distillation", 2025).

The student samples a continuation; ``labels`` hold the sampled tokens ``y`` (``-100`` at the prompt and
padding). Per sampled token, with log-probabilities of the model's own distribution (no temperature):

    L = -(log p_T(y) - log p_S(y)).detach() * log p_S(y)

``-(log p_S(y) - log p_T(y))`` is the per-token reverse-KL estimate, used as the advantage of a
REINFORCE step on ``log p_S(y)`` (tinker-cookbook's ``incorporate_kl_penalty`` with the importance
ratio 1 of exactly on-policy samples); its expected gradient over ``y ~ p_S`` is the gradient of
``KL(p_S || p_T)``. The value is that surrogate, not the divergence (0 when the models agree).
``teacher`` is the teacher's logits ``(B, T, V)`` or its log-probabilities of the sampled tokens
``(B, T)`` (a teacher that only scored them). Averaged over the sampled tokens.
"""

from __future__ import annotations

import torch

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses._lm import (
    DistillLoss,
    log_probs_of,
    mean_over_tokens,
    token_rows,
    valid_positions,
)


def sampled_token_log_probs(
    logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None, detach: bool = False
) -> torch.Tensor:
    """float32 ``log p(y)`` of the sampled tokens at the valid positions, ``(N,)``."""
    rows = log_probs_of(token_rows(logits, index, detach), 1.0)
    tokens = labels.reshape(-1) if index is None else labels.reshape(-1).index_select(0, index)
    return rows.gather(-1, tokens.long()[:, None]).squeeze(-1)


def sampled_reverse_kl(
    student_logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean of ``-(log p_T(y) - log p_S(y)).detach() * log p_S(y)`` over the sampled tokens."""
    index = valid_positions(labels, student_logits.shape, "sampled_reverse_kl")
    student_lp = sampled_token_log_probs(student_logits, labels, index)
    if teacher.shape == labels.shape:  # the teacher's log-probs of the sampled tokens
        flat = teacher.detach().reshape(-1).float()
        teacher_lp = flat if index is None else flat.index_select(0, index)
    elif teacher.shape[:-1] == labels.shape:
        teacher_lp = sampled_token_log_probs(teacher, labels, index, detach=True)
    else:
        raise DistillError(
            f"sampled_reverse_kl: the teacher input {tuple(teacher.shape)} is neither logits (B, T, V) "
            f"nor log-probs of the sampled tokens (B, T) for labels {tuple(labels.shape)}"
        )
    advantage = (teacher_lp - student_lp).detach()
    return mean_over_tokens(-advantage * student_lp)


@LOSSES.register(
    "sampled_reverse_kl",
    paper="Agarwal et al., On-Policy Distillation of Language Models (sampled-token reverse KL, tinker-cookbook form)",
    year=2024,
    kind="logit",
    consumes="next-token logits on student samples + sampled tokens as labels",
    inputs="token_logits",
    identity="zero",
    taps="@logits",
    weight="1 (on-policy data: the student's own samples)",
)
class SampledReverseKLLoss(DistillLoss):
    """Policy-gradient reverse KL on the student's sampled tokens (``labels``)."""

    extra_inputs = ("labels",)
    needs_same_shape = False  # the teacher may give (B, T) log-probs of the sampled tokens

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return sampled_reverse_kl(student, teacher, labels)
