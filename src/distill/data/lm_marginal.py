"""The teacher's next-character distribution at every student position, marginalised over where its
own token ends (the ``marginal_kl`` loss; docs/lm.md#teachers-of-another-tokenizer).

At a position where the teacher's token ends (:func:`~distill.data.lm_align.align_positions`), the
teacher's next-token distribution is conditioned on that boundary: the tokenizer put one there because
the previous token does not continue (the tokenization bias of Phan et al., 2024). The position's
unconditional next-character distribution comes from the teacher row *before* the token that covers
it: with ``u`` the text read since that row (a prefix of the covering token) and ``p`` that row's
next-token distribution,

    P(next = c) ∝ sum_{w starts with u, w longer than u, key(w[len(u):]) = c} p(w) + p(u) * Q(c)

where ``Q`` is the next-token distribution after the token ``u`` (the teacher row at this boundary when
there is one). Computed once here: per position the ``teacher_anchor`` row (``-1``: inside the row's
first teacher token) and the ``teacher_prefix`` ``u`` (an index into the prefix table); per prefix the
key of every teacher token's remainder (``prefix_keys`` ``(R, Vt)``, ``-1`` where the token does not
start with ``u`` or its remainder starts with nothing shared) and the teacher id whose text is ``u``
(``prefix_token`` ``(R,)``, ``-1``: none). The table has a row per distinct prefix of a teacher token,
so it is built only for teacher vocabularies up to :data:`MAX_TEACHER_VOCAB` entries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

MAX_TEACHER_VOCAB = 4096


def prefix_table(
    teacher: Sequence[str], key: Callable[[str], int]
) -> tuple[dict[str, int], Tensor, Tensor]:
    """``(index, prefix_keys (R, Vt), prefix_token (R,))`` for the teacher vocabulary's prefixes."""
    index: dict[str, int] = {}
    for text in teacher:
        for n in range(1, len(text) + 1):
            index.setdefault(text[:n], len(index))
    keys = torch.full((len(index), len(teacher)), -1, dtype=torch.int64)
    token = torch.full((len(index),), -1, dtype=torch.int64)
    for tid, text in enumerate(teacher):
        for n in range(1, len(text) + 1):
            row = index[text[:n]]
            if n < len(text):
                keys[row, tid] = key(text[n:])
            elif token[row] < 0:
                token[row] = tid
    return index, keys, token


def anchor_positions(
    text: str,
    starts: Sequence[int],
    student_ends: Tensor,
    teacher_ends: Tensor,
    index: dict[str, int],
) -> tuple[Tensor, Tensor]:
    """``(teacher_anchor, teacher_prefix)``, both ``(N, L)`` int64: for each student token the teacher
    row at the last teacher boundary strictly before its end and the index of the text between the two
    (``-1``, ``-1`` inside the first teacher token, at a token cut inside a character, or when that text
    is no teacher token's prefix). Ends are :func:`~distill.data.lm_align.boundary_ends` from each
    row's start (``starts``, characters into ``text``)."""
    after = torch.searchsorted(teacher_ends.contiguous(), student_ends.contiguous())
    anchor = after - 1
    begin = teacher_ends.gather(1, anchor.clamp_min(0))
    usable = (anchor >= 0) & (student_ends >= 0) & (begin % 2 == 0)
    prefix = torch.full_like(anchor, -1)
    for n, (row_begin, row_end, ok) in enumerate(
        zip(begin.tolist(), student_ends.tolist(), usable.tolist(), strict=True)
    ):
        at = starts[n]
        for j, (b, e, good) in enumerate(zip(row_begin, row_end, ok, strict=True)):
            if good:
                prefix[n, j] = index.get(text[at + b // 2 : at + e // 2], -1)
    anchor = torch.where(prefix >= 0, anchor, torch.full_like(anchor, -1))
    return anchor, prefix
