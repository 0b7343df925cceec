"""The same text in two tokenizers, for distilling between models that do not share one (``uld``,
``aligned_kl``, ``marginal_kl``).

Each row of a :class:`PairedLMDataset` is a student row of ``L`` tokens (``input_ids``, ``labels``,
``chars`` as in :class:`~distill.data.lm.LMDataset`) and ``teacher_input_ids``: the teacher tokenizer's
first ``L`` tokens of the text starting at the same character. ``causal_lm`` feeds the teacher those
(``Task.teacher_inputs``), so row ``j`` of either model's logits predicts its own token ``j + 1`` from
the same starting point. Rows whose text is too short for ``L`` teacher tokens (at the corpus end) are
dropped.

Two pairings of the rows' positions: ``uld`` pairs them by position, like TRL's ``ULDLoss`` (position
``j`` of the two rows covers different text when the tokenizers cut it differently); ``aligned_kl``
reads the character-offset alignment the dataset also carries when both tokenizers give offsets
(:mod:`distill.data.lm_align`): ``teacher_position`` ``(N, L)`` (the teacher token that ends where
student token ``j`` ends, ``-1`` if none) and the two vocabularies' keys (``student_vocab_key``,
``teacher_vocab_key``: the student id of the longest shared string each token starts with).
``marginal_kl`` reads, for teacher vocabularies up to
:data:`~distill.data.lm_marginal.MAX_TEACHER_VOCAB` tokens, the teacher row before each position's
covering token and the prefix read since (:mod:`distill.data.lm_marginal`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.data.lm import LMDataset, LMTokenizer
from distill.data.lm_align import (
    SpanTokenizer,
    align_positions,
    boundary_ends,
    shared_keyer,
    vocab_keys,
)
from distill.data.lm_marginal import MAX_TEACHER_VOCAB, anchor_positions, prefix_table
from distill.errors import DistillError


def teacher_rows(
    text: str, starts: list[int], tokenizer: LMTokenizer, length: int
) -> tuple[Tensor, list[int], Tensor | None]:
    """``(rows (N, length), kept, ends)``: the first ``length`` tokens of ``text[start:]`` for each
    start whose text gives that many, the indices of those starts, and (when the tokenizer gives
    offsets) each token's :func:`~distill.data.lm_align.boundary_ends` from its row's start."""
    rows, kept, ends = [], [], []
    spans = isinstance(tokenizer, SpanTokenizer)
    for i, start in enumerate(starts):
        window = 4 * length
        while True:
            piece = text[start : start + window]
            ids, at = tokenizer.encode_spans(piece) if spans else (tokenizer.encode(piece), [])
            if len(ids) > length or start + window >= len(text):
                break
            window *= 2
        # the last token of a window may be cut by it: keep only tokens before it
        if len(ids) > length:
            rows.append(ids[:length])
            kept.append(i)
            if spans:
                ends.append(boundary_ends(at[: length + 1], "teacher")[:length])
    if not rows:
        raise DistillError(
            f"paired LM data: no row of the text gives {length} teacher tokens; use a smaller block_size"
        )
    found = torch.tensor(ends, dtype=torch.int64) if spans else None
    return torch.tensor(rows, dtype=torch.int64), kept, found


def block_starts(blocks: Tensor, tokenizer: LMTokenizer) -> list[int]:
    """The character offset of each packed block's first token (blocks overlap by one token)."""
    chars = tokenizer.token_chars()
    offsets, at = [], 0
    for row in blocks:
        offsets.append(at)
        at += int(chars[row[:-1]].sum())  # the next block starts at this one's last token
    return offsets


class PairedLMDataset(LMDataset):
    """An :class:`LMDataset` of the student's rows that also carries the teacher's ids of the same text
    (``teacher_input_ids``); ``teacher_num_classes`` is the teacher tokenizer's length. ``alignment``
    (optional): ``(teacher_position (N, L), student_vocab_key (Vs,), teacher_vocab_key (Vt,))``;
    ``marginal`` (optional): ``(teacher_anchor (N, L), teacher_prefix (N, L), prefix_keys (R, Vt),
    prefix_token (R,))``."""

    def __init__(
        self,
        input_ids: Tensor,
        tokenizer: LMTokenizer,
        teacher_input_ids: Tensor,
        teacher_tokenizer: LMTokenizer,
        name: str = "lm",
        alignment: tuple[Tensor, Tensor, Tensor] | None = None,
        marginal: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    ) -> None:
        if teacher_input_ids.shape != input_ids.shape:
            raise DistillError(
                f"paired LM data {name!r}: teacher rows {tuple(teacher_input_ids.shape)} and student "
                f"rows {tuple(input_ids.shape)} differ in shape; build them with teacher_rows"
            )
        if alignment is not None and alignment[0].shape != input_ids.shape:
            raise DistillError(
                f"paired LM data {name!r}: teacher_position {tuple(alignment[0].shape)} does not "
                f"match the rows {tuple(input_ids.shape)}; build it with align_positions"
            )
        super().__init__(input_ids, tokenizer, name=name)
        self.teacher_input_ids = teacher_input_ids
        self.teacher_tokenizer = teacher_tokenizer
        self.teacher_num_classes = teacher_tokenizer.vocab_size
        self.alignment = alignment
        self.marginal = marginal

    def batch(self, idx: Tensor) -> dict[str, Tensor]:
        out = {**super().batch(idx), "teacher_input_ids": self.teacher_input_ids[idx]}
        if self.alignment is not None:
            position, student_key, teacher_key = self.alignment
            out["teacher_position"] = position[idx]
            out["student_vocab_key"] = student_key
            out["teacher_vocab_key"] = teacher_key
        if self.marginal is not None:
            anchor, prefix, prefix_keys, prefix_token = self.marginal
            out["teacher_anchor"] = anchor[idx]
            out["teacher_prefix"] = prefix[idx]
            out["prefix_keys"] = prefix_keys
            out["prefix_token"] = prefix_token
        return out

    def _take(self, idx: Tensor) -> PairedLMDataset:
        alignment = marginal = None
        if self.alignment is not None:
            alignment = (self.alignment[0][idx], *self.alignment[1:])
        if self.marginal is not None:
            marginal = (self.marginal[0][idx], self.marginal[1][idx], *self.marginal[2:])
        return PairedLMDataset(
            self.input_ids[idx],
            self.tokenizer,
            self.teacher_input_ids[idx],
            self.teacher_tokenizer,
            self.name,
            alignment,  # type: ignore[arg-type]
            marginal,  # type: ignore[arg-type]
        )


def student_ends(
    text: str, blocks: Tensor, tokenizer: LMTokenizer
) -> tuple[Tensor, list[int]] | None:
    """``(ends (N, L), starts)``: the :func:`~distill.data.lm_align.boundary_ends` of the packed
    ``blocks`` of ``text``, each from its block's first character, and those characters; None when the
    tokenizer gives no offsets."""
    if not isinstance(tokenizer, SpanTokenizer):
        return None
    ids, ends = tokenizer.encode_spans(text)
    n, length = blocks.shape
    step = length - 1  # blocks overlap by one token
    if not torch.equal(torch.tensor(ids[: n * step + 1], dtype=torch.int64), _flat(blocks)):
        raise DistillError(
            "paired LM data: the student rows are not the tokenizer's ids of the text; "
            "pack them with pack_blocks from tokenizer.encode(text)"
        )
    doubled = torch.tensor(boundary_ends(ends, "student"), dtype=torch.int64)
    rows = doubled[: n * step + 1].unfold(0, length, step)[:n]
    starts = [0] + ends[step - 1 : (n - 1) * step : step]
    first = torch.tensor(starts, dtype=torch.int64)
    return torch.where(rows >= 0, rows - 2 * first[:, None], rows), starts


def _flat(blocks: Tensor) -> Tensor:
    """The token stream that overlapping ``blocks`` were cut from."""
    return torch.cat([blocks[:, :-1].reshape(-1), blocks[-1, -1:]])


def paired_dataset(
    text: str, blocks: Tensor, tokenizer: LMTokenizer, teacher_tokenizer: LMTokenizer, name: str
) -> PairedLMDataset:
    """``blocks`` (packed student rows of ``text``) with the teacher's ids of the same text and, when
    both tokenizers give offsets, the character-offset alignment of the two."""
    spans = student_ends(text, blocks, tokenizer)
    starts = spans[1] if spans is not None else block_starts(blocks, tokenizer)
    rows, kept, teacher_ends = teacher_rows(text, starts, teacher_tokenizer, blocks.shape[1])
    alignment = marginal = None
    if spans is not None and teacher_ends is not None:
        student_texts = tokenizer.token_texts()  # type: ignore[attr-defined]
        teacher_texts = teacher_tokenizer.token_texts()  # type: ignore[attr-defined]
        keys = vocab_keys(student_texts, teacher_texts)
        alignment = (align_positions(spans[0][kept], teacher_ends), *keys)
        if len(teacher_texts) <= MAX_TEACHER_VOCAB:
            index, prefix_keys, prefix_token = prefix_table(
                teacher_texts, shared_keyer(student_texts, teacher_texts)
            )
            starts_kept = [spans[1][k] for k in kept]
            anchor, prefix = anchor_positions(
                text, starts_kept, spans[0][kept], teacher_ends, index
            )
            marginal = (anchor, prefix, prefix_keys, prefix_token)
    return PairedLMDataset(
        blocks[kept], tokenizer, rows, teacher_tokenizer, name, alignment, marginal
    )
