"""Character-offset alignment of two tokenizations of the same text, for teachers of another tokenizer
(the ``aligned_kl`` loss; docs/lm.md#teachers-of-another-tokenizer).

Two things are computed once, in the data pipeline, so a training step only gathers:

* **Aligned positions** (:func:`align_positions`): logit row ``j`` of the student has read the text up to
  the end of its token ``j``, row ``i`` of the teacher up to the end of its token ``i``. Where the two
  ends are the same character, both rows have read exactly the same text and both predict the next
  token from the same character on: ``teacher_position[j] = i``, else ``-1``.
* **The vocabulary map** (:func:`vocab_keys`): the strings both vocabularies hold (``shared``) are the
  outcomes both models can be compared on. Every token of either vocabulary is keyed by the *student id*
  of the longest shared string its text starts with (``-1``: none), so "the next token starts with
  shared string ``u``" is one event for both models. Tokens with identical strings map onto each other
  id for id, and with one tokenizer on both sides the map is the identity. For a character student (or
  teacher) the shared strings are the characters and the key is a token's first character, so both
  distributions become next-character distributions (a subword model's given its token boundary
  there, which the other side does not see).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from distill.errors import DistillError


@runtime_checkable
class SpanTokenizer(Protocol):
    """A tokenizer that says where each token ends in the text it encoded."""

    vocab_size: int

    def encode_spans(self, text: str) -> tuple[list[int], list[int]]:
        """``(ids, ends)``: the token ids of ``text`` and the character offset just past each token."""
        ...

    def token_texts(self) -> list[str]:
        """The text of each id alone, distinct per id (a byte that is not a whole character: a lone
        surrogate, ``surrogateescape``)."""
        ...


def spans_of(tokenizer: object, text: str, role: str) -> tuple[list[int], list[int]]:
    """``tokenizer.encode_spans(text)``, or one line naming the tokenizer that cannot give offsets."""
    if not isinstance(tokenizer, SpanTokenizer):
        raise DistillError(
            f"aligned pairs need the {role} tokenizer's character offsets, which "
            f"{type(tokenizer).__name__} does not give (encode_spans); use the char or bpe tokenizer"
        )
    return tokenizer.encode_spans(text)


def boundary_ends(ends: Sequence[int], role: str) -> list[int]:
    """Ends doubled, so they compare across tokenizers, with the tokens that end inside a character
    (a byte-level piece followed by another piece of the same character: both "end" at the character's
    end) made unmatchable: ``-1`` for the student, ``2 * end - 1`` for the teacher (order kept)."""
    out = [2 * end for end in ends]
    for k in range(len(ends) - 1):
        if ends[k] >= ends[k + 1]:
            out[k] = -1 if role == "student" else 2 * ends[k] - 1
    return out


def align_positions(student_ends: Tensor, teacher_ends: Tensor) -> Tensor:
    """``(N, Ls)`` int64: for each student token ``j`` of each row the teacher token ``i`` that ends at
    the same character (``teacher_ends[n, i] == student_ends[n, j]``), else ``-1``. Ends are
    :func:`boundary_ends` from the row's common start (the teacher's non-decreasing along each row)."""
    if student_ends.shape[0] != teacher_ends.shape[0]:
        raise DistillError(
            f"aligned pairs: {student_ends.shape[0]} student rows but {teacher_ends.shape[0]} "
            "teacher rows; pair each student row with the teacher row of the same text"
        )
    found = torch.searchsorted(teacher_ends.contiguous(), student_ends.contiguous())
    inside = found < teacher_ends.shape[1]
    at = teacher_ends.gather(1, found.clamp_max(teacher_ends.shape[1] - 1))
    return torch.where(inside & (at == student_ends), found, torch.full_like(found, -1))


def shared_keyer(student: Sequence[str], teacher: Sequence[str]) -> Callable[[str], int]:
    """``key(text)``: the student id of the longest string of both vocabularies that ``text`` starts
    with, ``-1`` when there is none."""
    first: dict[str, int] = {}
    teacher_strings = set(teacher)
    for sid, text in enumerate(student):
        if text:
            first.setdefault(text, sid)
    shared = {text: sid for text, sid in first.items() if text in teacher_strings}
    if not shared:
        raise DistillError(
            "aligned pairs: the student and teacher vocabularies share no token string, so no "
            "next-token event can be compared; use the 'uld' loss or sequence-level KD"
        )
    longest = max(len(text) for text in shared)

    def key(text: str) -> int:
        for n in range(min(len(text), longest), 0, -1):
            if text[:n] in shared:
                return shared[text[:n]]
        return -1

    return key


def vocab_keys(student: Sequence[str], teacher: Sequence[str]) -> tuple[Tensor, Tensor]:
    """``(student_key (Vs,), teacher_key (Vt,))`` int64: the student id of the longest string of both
    vocabularies that each token's text starts with, ``-1`` when there is none."""
    key = shared_keyer(student, teacher)
    return (
        torch.tensor([key(t) for t in student], dtype=torch.int64),
        torch.tensor([key(t) for t in teacher], dtype=torch.int64),
    )
