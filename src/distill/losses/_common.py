"""Helpers shared by several losses: pairing tensors per level or layer, matching spatial sizes,
padding masks of token sequences, and option checks with the same message everywhere."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses._standardize import standardize as zscore

Maps = torch.Tensor | Sequence[torch.Tensor]

Tensors = torch.Tensor | Sequence[torch.Tensor]


def level_pairs(name: str, student: Maps, teacher: Maps) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(student, teacher) pairs of 4-D maps from two tensors or two equally long lists."""
    s = [student] if isinstance(student, torch.Tensor) else list(student)
    t = [teacher] if isinstance(teacher, torch.Tensor) else list(teacher)
    if len(s) != len(t) or not s:
        raise ValueError(
            f"{name}: got {len(s)} student and {len(t)} teacher feature maps; give one teacher tap per "
            "student tap"
        )
    for a, b in zip(s, t, strict=True):
        if a.ndim != 4 or b.ndim != 4 or a.shape[0] != b.shape[0]:
            raise ValueError(
                f"{name}: needs feature maps (B, C, H, W) with the same batch size, got student "
                f"{tuple(a.shape)} and teacher {tuple(b.shape)}; tap convolutional stages"
            )
    return list(zip(s, t, strict=True))


def flat_logits(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, standardize: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(..., C)`` as float32 rows ``(N, C)``, the teacher's detached; ``standardize`` z-scores
    each row (:func:`distill.losses._standardize.standardize`)."""
    num_classes = student_logits.shape[-1]
    s, t = student_logits, teacher_logits.detach()
    if s.ndim != 2:  # (B, C) rows as they are: a view would add a node to the backward graph
        s = s.reshape(-1, num_classes)
    if t.ndim != 2 or t.shape[-1] != num_classes:
        t = t.reshape(-1, num_classes)
    s, t = s.float(), t.float()
    return (zscore(s), zscore(t)) if standardize else (s, t)


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool whichever map is larger to the smaller (H, W), as RepDistiller/mdistiller do."""
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    if tuple(a.shape[2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def layer_pairs(student: Tensors, teacher: Tensors, name: str) -> list[tuple[torch.Tensor, ...]]:
    """Pair single tensors or equal-length lists of tensors (one per tapped layer)."""
    s = list(student) if isinstance(student, list | tuple) else [student]
    t = list(teacher) if isinstance(teacher, list | tuple) else [teacher]
    if len(s) != len(t):
        raise DistillError(
            f"{name}: the term taps {len(s)} student layers but {len(t)} teacher layers; "
            "map each student layer to one teacher layer"
        )
    return list(zip(s, t, strict=True))


def token_mask(attention_mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
    """``attention_mask`` (B, T) (1 real token, 0 padding) as a bool tensor, checked against the
    inputs' batch size and length; ``None`` (every token real) stays ``None``."""
    if attention_mask is None:
        return None
    if tuple(attention_mask.shape) != (batch, length):
        raise DistillError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the tapped tensors have batch "
            f"{batch} and length {length}; pass the batch's (B, T) mask of the same tokens"
        )
    return attention_mask.detach().bool()


def real_tokens(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``(B, T, D) -> (N, D)``: the states of the real tokens (all ``B * T`` when ``mask`` is None)."""
    return states.reshape(-1, states.shape[-1]) if mask is None else states[mask]


def check_attentions(student: torch.Tensor, teacher: torch.Tensor, name: str) -> None:
    """Both ``(B, heads, T, T)`` with the same batch, heads and length."""
    if student.ndim != 4 or teacher.ndim != 4 or student.shape[-1] != student.shape[-2]:
        raise DistillError(
            f"{name}: needs attention matrices (B, heads, T, T), got student {tuple(student.shape)} "
            f"and teacher {tuple(teacher.shape)}; tap @attentions.N"
        )
    if student.shape[1] != teacher.shape[1]:
        raise DistillError(
            f"{name}: the student has {student.shape[1]} attention heads but the teacher has "
            f"{teacher.shape[1]}; {name} compares head by head: pick layers with equal head counts"
        )
    if student.shape != teacher.shape:
        raise DistillError(
            f"{name}: student attentions {tuple(student.shape)} and teacher attentions "
            f"{tuple(teacher.shape)} differ in batch or length; both models must see the same tokens"
        )


def check_temperature(name: str, temperature: float) -> float:
    """TTM and WTTM's temperature (gamma = 1/T), > 0."""
    return positive(name, "temperature", temperature, "the paper uses 2 to 10 (gamma = 1/T)")


def positive(name: str, option: str, value: float, hint: str) -> float:
    """``value`` as a float when it is > 0 (NaN is not), else ``ValueError`` naming the loss, the option,
    the value and ``hint`` (the paper's value)."""
    if not value > 0:
        raise ValueError(f"{name}: {option} must be > 0, got {value}; {hint}")
    return float(value)
