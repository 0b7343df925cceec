"""The same text in two tokenizers, for distilling between models that do not share one (``uld``).

Each row of a :class:`PairedLMDataset` is a student row of ``L`` tokens (``input_ids``, ``labels``,
``chars`` as in :class:`~distill.data.lm.LMDataset`) and ``teacher_input_ids``: the teacher tokenizer's
first ``L`` tokens of the text starting at the same character. ``causal_lm`` feeds the teacher those
(``Task.teacher_inputs``), so row ``j`` of either model's logits predicts its own token ``j + 1`` from
the same starting point. Position ``j`` of the two rows covers different text when the tokenizers cut
it differently: like TRL's ``ULDLoss``, the pairing is positional over the first ``min(len)`` positions
(here both rows have ``L`` tokens), not the alignment by character offsets that matches equal-text spans
(left for later). Rows whose text is too short for ``L`` teacher tokens (at the corpus end) are dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.data.lm import LMDataset, LMTokenizer
from distill.errors import DistillError


def teacher_rows(
    text: str, starts: list[int], tokenizer: LMTokenizer, length: int
) -> tuple[Tensor, list[int]]:
    """``(rows (N, length), kept)``: the first ``length`` tokens of ``text[start:]`` for each start whose
    text gives that many, and the indices of those starts."""
    rows, kept = [], []
    for i, start in enumerate(starts):
        window = 4 * length
        while True:
            ids = tokenizer.encode(text[start : start + window])
            if len(ids) > length or start + window >= len(text):
                break
            window *= 2
        # the last token of a window may be cut by it: keep only tokens before it
        if len(ids) > length:
            rows.append(ids[:length])
            kept.append(i)
    if not rows:
        raise DistillError(
            f"paired LM data: no row of the text gives {length} teacher tokens; use a smaller block_size"
        )
    return torch.tensor(rows, dtype=torch.int64), kept


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
    (``teacher_input_ids``); ``teacher_num_classes`` is the teacher tokenizer's length."""

    def __init__(
        self,
        input_ids: Tensor,
        tokenizer: LMTokenizer,
        teacher_input_ids: Tensor,
        teacher_tokenizer: LMTokenizer,
        name: str = "lm",
    ) -> None:
        if teacher_input_ids.shape != input_ids.shape:
            raise DistillError(
                f"paired LM data {name!r}: teacher rows {tuple(teacher_input_ids.shape)} and student "
                f"rows {tuple(input_ids.shape)} differ in shape; build them with teacher_rows"
            )
        super().__init__(input_ids, tokenizer, name=name)
        self.teacher_input_ids = teacher_input_ids
        self.teacher_tokenizer = teacher_tokenizer
        self.teacher_num_classes = teacher_tokenizer.vocab_size

    def batch(self, idx: Tensor) -> dict[str, Tensor]:
        return {**super().batch(idx), "teacher_input_ids": self.teacher_input_ids[idx]}

    def _take(self, idx: Tensor) -> PairedLMDataset:
        return PairedLMDataset(
            self.input_ids[idx],
            self.tokenizer,
            self.teacher_input_ids[idx],
            self.teacher_tokenizer,
            self.name,
        )


def paired_dataset(
    text: str, blocks: Tensor, tokenizer: LMTokenizer, teacher_tokenizer: LMTokenizer, name: str
) -> PairedLMDataset:
    """``blocks`` (packed student rows of ``text``) with the teacher's ids of the same text."""
    rows, kept = teacher_rows(
        text, block_starts(blocks, tokenizer), teacher_tokenizer, blocks.shape[1]
    )
    return PairedLMDataset(blocks[kept], tokenizer, rows, teacher_tokenizer, name)
