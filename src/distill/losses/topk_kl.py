"""Top-k sparse KL: KL from a teacher's cached top-k distribution, as Arcee's DistillKit computes it
(``distillkit/lossfuncs/kl.py``, ``sparse_kl_div``; Goddard et al., DistillKit, 2024), the form NVIDIA
Model Optimizer and offline LM distillation use when full-vocabulary teacher logits are too large to keep.

The teacher gives, per token, its top-k log-probabilities, their ids and (optionally) the mass left
outside them; the student gives full logits. Both become distributions over ``k + 1`` buckets (the k ids,
then everything else; see ``_lm.topk_buckets``), and per valid token (label not ``-100``)

    KL = sum_buckets p_T (log p_T - log p_S)

``missing="renormalise"`` (DistillKit ``zero``): the teacher's top-k are scaled to sum to 1 and the rest
has probability 0, so only the k ids count. ``missing="tail_bucket"`` (DistillKit ``symmetric_uniform``):
the teacher's missing mass is one more bucket compared with the student's mass outside the k ids; with
the exact ``rest`` this is 0 when the student equals the teacher. ``capture_temperature`` is the
temperature the top-k were stored at; ``temperature`` re-tempers them (``p_i^(T_c / T)``, renormalised,
as DistillKit). No ``T^2`` factor (DistillKit multiplies by it; equal at T = 1). Averaged over valid tokens.
"""

from __future__ import annotations

import torch

from distill.losses import LOSSES
from distill.losses._lm import TopKLoss, kl_rows


@LOSSES.register(
    "topk_kl",
    paper="Goddard et al., Arcee DistillKit (sparse top-k KL with missing-mass handling)",
    year=2024,
    kind="logit",
    consumes="student next-token logits, teacher top-k log-probs/ids/rest + labels",
    inputs="token_logits",
    taps="@logits (student), a top-k teacher output",
    weight="1 next to the task loss",
)
class TopKKLLoss(TopKLoss):
    """KL(teacher top-k || student) over k + 1 buckets, mean over valid tokens."""

    name = "topk_kl"

    def per_token(
        self, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor
    ) -> torch.Tensor:
        return kl_rows(teacher_log_probs, student_log_probs)
