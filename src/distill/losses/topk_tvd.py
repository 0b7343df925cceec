"""Top-k sparse total variation distance: DistillKit's ``sparse_tvd`` (``distillkit/lossfuncs/tvd.py``;
Goddard et al., DistillKit, 2024), after Wen et al.'s f-divergence LM distillation (ACL 2023).

Student and teacher become distributions over ``k + 1`` buckets (the teacher's k ids, then everything
else; ``_lm.topk_buckets``) and per valid token

    TVD = 1/2 * sum_buckets |p_T - p_S|

``missing="renormalise"`` (DistillKit ``zero``): the teacher's top-k sum to 1, so the student's whole
mass outside them counts; ``missing="tail_bucket"`` (``symmetric_uniform``): the two missing masses
are compared as one bucket. Averaged over valid tokens; no ``T^2`` factor.
"""

from __future__ import annotations

import torch

from distill.losses import LOSSES
from distill.losses._lm import TopKLoss
from distill.losses.tvd import tvd_per_token


@LOSSES.register(
    "topk_tvd",
    paper="Goddard et al., Arcee DistillKit (sparse top-k TVD with missing-mass handling)",
    year=2024,
    kind="logit",
    consumes="student next-token logits, teacher top-k log-probs/ids/rest + labels",
    inputs="token_logits",
    taps="@logits (student), a top-k teacher output",
    weight="1 next to the task loss",
)
class TopKTVDLoss(TopKLoss):
    """Total variation distance between the teacher's top-k and the student over k + 1 buckets."""

    name = "topk_tvd"

    def per_token(
        self, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor
    ) -> torch.Tensor:
        return tvd_per_token(student_log_probs, teacher_log_probs)
