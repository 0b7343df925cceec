"""Sanh et al., "DistilBERT, a distilled version of BERT: smaller, faster, cheaper and lighter",
NeurIPS EMC^2 Workshop 2019.

The cosine embedding loss that aligns the directions of the student's and the teacher's hidden states,
token by token, averaged over the real (non-padded) tokens of the batch:

    L_cos = 1/N sum_{real tokens i} (1 - cos(h_s,i, h_t,i))          h (B, T, D), N real tokens

This is the setting of Hugging Face's DistilBERT training script (``examples/research_projects/
distillation/distiller.py``): last-layer states, ``attention_mask``-selected tokens, and
``nn.CosineEmbeddingLoss(reduction="mean")`` with target 1. Only directions count: scaling a token's
state by a positive factor changes nothing.

Both states need the same width (DistilBERT's student keeps BERT's hidden size); for a narrower
student give the term ``projector: linear``. DistilBERT's weights: ``alpha_ce = 5`` (soft targets at
T = 2), ``alpha_mlm = 2``, ``alpha_cos = 1``; next to a task loss of weight 1 (task-specific
distillation), a weight of 1 is a fair start. Taps: ``@hidden_states.L`` (the last layer) on both sides.
A list of taps sums the per-layer losses (``"@hidden_states.*"`` with a ``layer_map`` in a text recipe
matches every student layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses._common import Tensors, layer_pairs, real_tokens, token_mask
from distill.losses.base import DistillLoss


def hidden_cosine_loss(
    student_states: torch.Tensor,
    teacher_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of ``1 - cos`` over the real tokens; states ``(B, T, D)`` of equal shape."""
    if student_states.ndim != 3 or student_states.shape != teacher_states.shape:
        raise DistillError(
            f"hidden_cosine: needs token states (B, T, D) of equal shape, got student "
            f"{tuple(student_states.shape)} and teacher {tuple(teacher_states.shape)}; give the term "
            "projector: linear when the widths differ"
        )
    mask = token_mask(attention_mask, *student_states.shape[:2])
    s = real_tokens(student_states, mask).float()
    t = real_tokens(teacher_states.detach(), mask).float()
    return (1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)).mean()


@LOSSES.register(
    "hidden_cosine",
    paper="Sanh et al., DistilBERT, a distilled version of BERT: smaller, faster, cheaper and lighter, "
    "NeurIPS EMC^2 Workshop",
    year=2019,
    kind="feature",
    consumes="token hidden states (last layer), cosine per real token",
    inputs="sequences",
    identity="zero",
    taps="@hidden_states.L_s against @hidden_states.L_t (the last layers); projector linear when "
    "widths differ",
    weight="1 (DistilBERT: alpha_cos 1 next to alpha_ce 5 and alpha_mlm 2)",
)
class HiddenCosineLoss(DistillLoss):
    """DistilBERT's cosine loss on token states ``(B, T, D)`` (or lists of them, summed)."""

    extra_inputs = ("attention_mask",)

    def forward(
        self, student: Tensors, teacher: Tensors, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        total = None
        for s, t in layer_pairs(student, teacher, "hidden_cosine"):
            with torch.autocast(s.device.type, enabled=False):
                value = hidden_cosine_loss(s, t, attention_mask)
            total = value if total is None else total + value
        return total
