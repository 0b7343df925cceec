"""Sun et al., "Patient Knowledge Distillation for BERT Model Compression", EMNLP 2019 (PKD).

The student learns "patiently" from several intermediate layers of the teacher, not only from its
output: the [CLS] states (position 0) of chosen layers, each L2-normalised, are matched with a squared
error (paper Eq. 4):

    L_PT = mean over samples, layers j and features of ( h_s,j / ||h_s,j|| - h_t,I(j) / ||h_t,I(j)|| )^2

The mean follows the authors' code (``patience_loss`` in PKD-for-BERT-Model-Compression,
``src/KD_loss.py``: ``F.mse_loss`` over ``(B, layers, D)`` after ``F.normalize(..., dim=2)``); the
paper's Eq. 4 sums over layers and features, a constant factor (``layers * D``) absorbed by the weight
``beta``. Normalising makes the loss blind to the scale of each state.

Layer choice (the term's taps, lists of ``@hidden_states.N``; a single tap also works): PKD-Skip
matches student layers ``1..M-1`` with every ``k``-th teacher layer (6-layer student from BERT-12:
student ``@hidden_states.1 .. 5`` against teacher ``@hidden_states.2, 4, 6, 8, 10``); PKD-Last with the
teacher's last ``M-1`` layers before the output. The final layer is left to the logit loss (``kd``).
Paper settings: ``normalize=True``, ``beta`` searched over {10, 100, 500, 1000} per task, next to
``(1 - alpha) CE + alpha KD`` with T in {5, 10, 20}, alpha in {0.2, 0.5, 0.7}. PKD requires equal hidden
sizes (the student is a shallower BERT); for a narrower student give the term ``projector: linear``.
Only position 0 is used, so the loss needs no ``attention_mask``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses._common import Tensors, layer_pairs
from distill.losses.base import DistillLoss


def _cls(states: torch.Tensor, side: str) -> torch.Tensor:
    if states.ndim != 3:
        raise DistillError(
            f"pkd: needs token states (B, T, D), got {side} shape {tuple(states.shape)}; tap "
            "@hidden_states.N"
        )
    return states[:, 0]


def pkd_loss(
    student_states: list[torch.Tensor], teacher_states: list[torch.Tensor], normalize: bool = True
) -> torch.Tensor:
    """Patience loss on the [CLS] states of paired layers; each state ``(B, T, D)``, equal ``D``."""
    s = torch.stack([_cls(x, "student") for x in student_states], dim=1).float()  # (B, layers, D)
    t = torch.stack([_cls(x, "teacher") for x in teacher_states], dim=1).detach().float()
    if s.shape != t.shape:
        raise DistillError(
            f"pkd: student [CLS] states {tuple(s.shape)} and teacher [CLS] states {tuple(t.shape)} "
            "differ (batch, layers, width); PKD needs equal widths: give the term projector: linear"
        )
    if normalize:
        s, t = F.normalize(s, p=2, dim=2), F.normalize(t, p=2, dim=2)
    return F.mse_loss(s, t)


@LOSSES.register(
    "pkd",
    paper="Sun et al., Patient Knowledge Distillation for BERT Model Compression, EMNLP",
    year=2019,
    kind="feature",
    consumes="[CLS] hidden states of several intermediate layers, L2-normalised",
    inputs="sequences",
    identity="zero",
    taps="lists of @hidden_states.N: student 1..M-1 against every k-th teacher layer (PKD-Skip, "
    "layer_map uniform) or the teacher's last M-1 (PKD-Last, layer_map last)",
    weight="beta in {10, 100, 500, 1000} (the authors' grid; 100 is a fair start)",
)
class PKDLoss(DistillLoss):
    """Patient KD on the position-0 states of one or several layers (``(B, T, D)`` each)."""

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        if not isinstance(normalize, bool):
            raise ValueError(f"pkd: normalize must be true or false, got {normalize!r}")
        self.normalize = normalize

    def forward(self, student: Tensors, teacher: Tensors) -> torch.Tensor:
        pairs = layer_pairs(student, teacher, "pkd")
        with torch.autocast(pairs[0][0].device.type, enabled=False):
            return pkd_loss([s for s, _ in pairs], [t for _, t in pairs], self.normalize)

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"
