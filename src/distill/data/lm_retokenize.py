"""Text between two tokenizers, for sequence-level KD from a teacher of another tokenizer (``seq_kd``
on paired data, :mod:`distill.lm_modes`; docs/lm.md#teachers-of-another-tokenizer).

The only thing both models share is text: a student prompt is decoded to text and encoded with the
teacher's tokenizer (:func:`teacher_prompts`); the teacher's continuation is decoded to text and encoded
with the student's tokenizer after the student's own prompt ids (:func:`student_row`). Nothing is
aligned, so it works for any pair whose tokenizers both encode and decode.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from distill.errors import DistillError

IGNORE = -100


def check_text_tokenizers(student: object, teacher: object) -> None:
    """Refuse, in one line, a tokenizer that cannot carry text across (no ``encode`` or ``decode``)."""
    for role, tokenizer in (("student", student), ("teacher", teacher)):
        for method in ("encode", "decode"):
            if not callable(getattr(tokenizer, method, None)):
                raise DistillError(
                    f"seq_kd with a teacher of another tokenizer passes text between them, but the "
                    f"{role} tokenizer {type(tokenizer).__name__} has no {method}(); use the char or "
                    "bpe tokenizer"
                )


def teacher_prompts(student: object, teacher: object, prompts: Tensor) -> list[list[int]]:
    """The teacher tokenizer's ids of each student prompt row's text (``prompts`` (B, P))."""
    out = []
    for row in prompts.tolist():
        text = student.decode(row)  # type: ignore[attr-defined]
        ids = list(teacher.encode(text))  # type: ignore[attr-defined]
        if not ids:
            raise DistillError(
                f"seq_kd: the prompt {text!r} is no text for the teacher's tokenizer; use a larger "
                "distill.data_mode.prompt_tokens"
            )
        out.append(ids)
    return out


def teacher_budget(prompts: list[list[int]], student_prompt: int, needed: int) -> int:
    """Teacher tokens to sample for ``needed`` student tokens: ``needed`` scaled by the teacher's tokens
    per student token on the prompts' text, with a quarter to spare (a short continuation is padded)."""
    ratio = sum(len(p) for p in prompts) / (len(prompts) * student_prompt)
    return max(1, math.ceil(needed * ratio * 1.25))


def encode_known(tokenizer: object, text: str) -> list[int]:
    """``tokenizer.encode(text)``, dropping the characters it cannot encode (a character tokenizer's
    alphabet is the training text's; the teacher may write others, or an incomplete UTF-8 byte)."""
    try:
        return list(tokenizer.encode(text))  # type: ignore[attr-defined]
    except DistillError:
        pass
    kept = []
    for char in text:
        try:
            tokenizer.encode(char)  # type: ignore[attr-defined]
        except DistillError:
            continue
        kept.append(char)
    return list(tokenizer.encode("".join(kept)))  # type: ignore[attr-defined]


def student_row(tokenizer: object, prompt: list[int], continuation: str, length: int) -> Tensor:
    """``(length,)`` int64: the student's ``prompt`` ids, then its ids of the teacher's
    ``continuation``; right-padded with ``-100`` when the continuation is short. Its last token is
    left out (the text may end inside it) unless the row is already full without it."""
    ids = encode_known(tokenizer, continuation)
    room = length - len(prompt)
    rest = ids[:room] if len(ids) > room else ids[:-1]
    row = prompt + rest
    return torch.tensor(row + [IGNORE] * (length - len(row)), dtype=torch.int64)
