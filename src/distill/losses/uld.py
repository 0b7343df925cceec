"""Universal Logit Distillation (ULD): Boizard et al., "Towards Cross-Tokenizer Distillation: the
Universal Logit Distillation Loss for LLMs", TMLR 2025 (arXiv 2024), as the authors' code and TRL's
``ULDLoss`` (``trl/experimental/gold``) compute it.

For teacher and student with different tokenizers the vocabularies cannot be matched id by id. ULD
compares the two next-token distributions through their sorted probabilities: per valid position,
with ``p = softmax(logits / temperature)`` sorted in decreasing order and the shorter one padded with
zeros,

    ULD = sum_i |p_S,(i) - p_T,(i)|

the closed form of the Wasserstein-1 distance between the two distributions under a cost that ignores
token identity. Positions must already be aligned (``logits[:, j]`` of both models predict the same
text; the task or data aligns them, e.g. the response tokens truncated to the shorter length as in the
paper). ``V`` may differ. Averaged over the valid tokens of the batch (TRL averages per sequence, then
over sequences: equal when the sequences have equal valid lengths). ``student_temperature`` and
``teacher_temperature`` default to 1 (TRL's defaults).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses._common import positive
from distill.losses._lm import DistillLoss, mean_over_tokens, token_rows, valid_positions


def uld_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
) -> torch.Tensor:
    """Mean over valid positions of the L1 distance between sorted probability vectors."""
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise DistillError(
            f"uld: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} cover different positions; align the two sequences first "
            "(equal (B, T), e.g. the response tokens cut to the shorter length)"
        )
    index = valid_positions(labels, student_logits.shape, "uld")
    s = F.softmax(token_rows(student_logits, index) / student_temperature, dim=-1)
    t = F.softmax(token_rows(teacher_logits, index, detach=True) / teacher_temperature, dim=-1)
    s = s.sort(dim=-1, descending=True).values
    t = t.sort(dim=-1, descending=True).values
    width = max(s.shape[-1], t.shape[-1])
    s = F.pad(s, (0, width - s.shape[-1]))
    t = F.pad(t, (0, width - t.shape[-1]))
    return mean_over_tokens((s - t).abs().sum(-1))


@LOSSES.register(
    "uld",
    paper="Boizard et al., Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss for LLMs",
    year=2024,
    kind="logit",
    consumes="next-token logits of two tokenizers (aligned positions) + labels",
    inputs="token_logits",
    identity="zero",
    taps="@logits",
    weight="1 next to the task loss (the paper: 1 with cross-entropy)",
)
class ULDLoss(DistillLoss):
    """Sorted-probability L1 (Wasserstein-1) distance per aligned token; vocabularies may differ."""

    extra_inputs = ("labels",)
    needs_same_shape = False

    def __init__(self, student_temperature: float = 1.0, teacher_temperature: float = 1.0) -> None:
        super().__init__()
        self.student_temperature = positive(
            "uld", "student_temperature", student_temperature, "TRL uses 1"
        )
        self.teacher_temperature = positive(
            "uld", "teacher_temperature", teacher_temperature, "TRL uses 1"
        )

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return uld_loss(
            student, teacher, labels, self.student_temperature, self.teacher_temperature
        )

    def extra_repr(self) -> str:
        return f"student_temperature={self.student_temperature}, teacher_temperature={self.teacher_temperature}"
