"""Top-k sparse generalized JSD: the Jensen-Shannon divergence of DistillKit's ``sparse_js_div``
(``distillkit/lossfuncs/jsd.py``; Goddard et al., DistillKit, 2024), generalised to GKD's ``beta``
(Agarwal et al., ICLR 2024).

Student and teacher become distributions over ``k + 1`` buckets (the teacher's k ids, then everything
else; ``_lm.topk_buckets``) and per valid token, with ``m = beta * p_T + (1 - beta) * p_S``:

    JSD(beta) = beta * KL(p_T || m) + (1 - beta) * KL(p_S || m)

``missing="renormalise"``: the teacher's top-k sum to 1 and its rest is 0, so the student's mass outside
the k ids adds ``rest_S * log(1 / (1 - beta))`` (DistillKit's ``zero``, ``rest_S * log 2`` at beta = 0.5);
``missing="tail_bucket"``: the teacher's missing mass is a bucket of its own (``symmetric_uniform``).
``beta`` in (0, 1); 0.5 (DistillKit's only value) by default. Averaged over valid tokens; no ``T^2``.
"""

from __future__ import annotations

import torch

from distill.losses import LOSSES
from distill.losses._lm import TopKLoss, check_fraction
from distill.losses.generalized_jsd import generalized_jsd_per_token


@LOSSES.register(
    "topk_jsd",
    paper="Goddard et al., Arcee DistillKit (sparse top-k JSD with missing-mass handling)",
    year=2024,
    kind="logit",
    consumes="student next-token logits, teacher top-k log-probs/ids/rest + labels",
    inputs="token_logits",
    taps="@logits (student), a top-k teacher output",
    weight="1 next to the task loss",
)
class TopKJSDLoss(TopKLoss):
    """Generalized JSD(beta) between the teacher's top-k and the student over k + 1 buckets."""

    name = "topk_jsd"

    def __init__(
        self,
        beta: float = 0.5,
        missing: str = "renormalise",
        temperature: float = 1.0,
        capture_temperature: float = 1.0,
    ) -> None:
        super().__init__(missing, temperature, capture_temperature)
        self.beta = check_fraction(self.name, "beta", beta, "DistillKit uses 0.5")
        if self.beta in (0.0, 1.0):
            raise ValueError(
                f"topk_jsd: beta must be strictly between 0 and 1, got {beta}; use topk_kl for the "
                "forward KL (the reverse KL from a top-k teacher is infinite off its k ids)"
            )

    def per_token(
        self, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor
    ) -> torch.Tensor:
        return generalized_jsd_per_token(student_log_probs, teacher_log_probs, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, {super().extra_repr()}"
