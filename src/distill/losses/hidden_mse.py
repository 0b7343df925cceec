"""Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding", Findings of EMNLP 2020.

Hidden-state distillation of Transformer encoders: the student's token states, mapped by a learned
linear map ``W_h`` to the teacher's width, regress the teacher's token states of the mapped layer
(paper Eq. 8), averaged over real (non-padded) tokens and features:

    L_hidn = MSE(H_s W_h, H_t)            H_s (B, T, d_s), W_h: d_s -> d_t, H_t (B, T, d_t)

The same loss on the embedding outputs (``@hidden_states.0`` on both sides) is TinyBERT's
embedding-layer loss ``L_embd = MSE(E_s W_e, E_t)`` (Eq. 9): give it its own term, which learns its own
``W_e`` as in the paper. A term whose taps are lists (``[@hidden_states.0, @hidden_states.1, ...]``)
sums the per-layer losses with one shared map, as the authors' code does (one ``fit_dense``
``nn.Linear(d_s, d_t)`` with bias for all layers, ``TinyBERT/task_distill.py``: ``rep_loss +=
loss_mse(student_rep, teacher_rep)``).

``W_h`` is created in ``build()`` only when the widths differ (``nn.Linear`` with bias, like
``fit_dense``); with equal widths the states are compared directly, and ``loss(x, x) = 0`` (TinyBERT's
code learns the map even then; give the term ``projector: linear`` for that). Padded
positions (``attention_mask`` 0) are left out of the mean; the authors' ``MSELoss`` averages over every
position, padding included, so the two agree when a batch has no padding.

Taps and weights: TinyBERT's uniform layer mapping ``g(m) = m * L_t / L_s`` (student
``@hidden_states.m`` against teacher ``@hidden_states.g(m)``, ``m = 0`` the embeddings; in a text
recipe ``student: "@hidden_states.*"``, ``teacher: "@hidden_states.*"``, ``layer_map: uniform`` gives
the list of layers 1..L_s, and a second term on ``@hidden_states.0`` the embedding loss), added with
weight 1 to the attention loss (``attention_mse``) in the intermediate-layer stage, followed by a
prediction-layer stage on logits (``kd`` at T = 1). Next to a task loss, weight 1 is a fair start.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses._common import Tensors, layer_pairs, real_tokens, token_mask
from distill.losses.base import DistillLoss


def _check_sequences(student: torch.Tensor, teacher: torch.Tensor, name: str) -> None:
    if student.ndim != 3 or teacher.ndim != 3 or student.shape[:2] != teacher.shape[:2]:
        raise DistillError(
            f"{name}: needs token states (B, T, D) with the same batch and length on both sides, got "
            f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)}; tap @hidden_states.N "
            "of models that share the tokenizer"
        )


def hidden_mse_loss(
    student_states: torch.Tensor,
    teacher_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error over the real tokens' features; states ``(B, T, D)`` of equal width."""
    _check_sequences(student_states, teacher_states, "hidden_mse")
    if student_states.shape[-1] != teacher_states.shape[-1]:
        raise DistillError(
            f"hidden_mse: student width {student_states.shape[-1]} differs from teacher width "
            f"{teacher_states.shape[-1]}; build the loss (Distiller.setup does) to learn W_h"
        )
    mask = token_mask(attention_mask, *student_states.shape[:2])
    s = real_tokens(student_states, mask).float()
    t = real_tokens(teacher_states.detach(), mask).float()
    return F.mse_loss(s, t)


@LOSSES.register(
    "hidden_mse",
    paper="Jiao et al., TinyBERT: Distilling BERT for Natural Language Understanding, Findings of EMNLP",
    year=2020,
    kind="feature",
    consumes="token hidden states (one or several layers; the embedding output for TinyBERT's "
    "embedding loss), through a learned linear map when widths differ",
    inputs="sequences",
    identity="zero",
    taps='"@hidden_states.*" on both sides with layer_map uniform (TinyBERT), or @hidden_states.0 '
    "on both sides for the embedding loss",
    weight="1 (TinyBERT adds hidden, embedding and attention losses unweighted)",
)
class HiddenMSELoss(DistillLoss):
    """TinyBERT's hidden-state (or embedding) MSE on token states ``(B, T, D)`` or lists of them."""

    extra_inputs = ("attention_mask",)
    needs_same_shape = False  # W_h maps the student's width to the teacher's

    def __init__(self) -> None:
        super().__init__()
        self.projector: nn.Module = nn.Identity()

    def build(self, student: Tensors, teacher: Tensors, **context: object) -> None:
        """Create ``W_h`` (``nn.Linear(d_s, d_t)``, shared by all tapped layers) when widths differ."""
        pairs = layer_pairs(student, teacher, "hidden_mse")
        for s, t in pairs:
            _check_sequences(s, t, "hidden_mse")
        widths = {(s.shape[-1], t.shape[-1]) for s, t in pairs}
        if len(widths) != 1:
            raise DistillError(
                f"hidden_mse: tapped layers have different (student, teacher) widths {sorted(widths)}; "
                "one shared W_h needs one pair of widths: split the term"
            )
        ((d_s, d_t),) = widths
        self.projector = nn.Linear(d_s, d_t) if d_s != d_t else nn.Identity()

    def forward(
        self, student: Tensors, teacher: Tensors, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        total = None
        for s, t in layer_pairs(student, teacher, "hidden_mse"):
            with torch.autocast(s.device.type, enabled=False):
                value = hidden_mse_loss(self.projector(s.float()), t, attention_mask)
            total = value if total is None else total + value
        return total
