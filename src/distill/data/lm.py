"""Language-model data: tokenizers, fixed-length blocks (packing) and prompt/response rows.

Batches follow the causal_lm contract (``distill/tasks/causal_lm.py``, docs/lm.md): ``input_ids``
(B, L), ``labels`` (B, L) with ``-100`` where a position is not scored, ``attention_mask`` (B, L) for
padded rows, ``index`` (B,) and ``chars`` (B,): the characters of text that the row's scored targets
(``labels[:, 1:]``) cover, so bits per character compare across tokenizers.

* :class:`CharTokenizer`: one id per character of a fixed alphabet (sorted, so the same corpus always
  gives the same ids).
* :func:`pack_blocks`: raw text as blocks of ``block_size + 1`` tokens that overlap by one, so every
  token after the first is a target exactly once.
* :func:`prompt_response_rows`: prompt/response pairs, right-padded, the prompt and the padding
  masked with ``-100``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from distill.errors import DistillError

IGNORE = -100


class LMTokenizer(Protocol):
    """What LM datasets need of a tokenizer."""

    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def token_chars(self) -> Tensor: ...


class CharTokenizer:
    """Characters to ids ``0 .. len(alphabet) - 1`` in sorted order of the alphabet."""

    def __init__(self, alphabet: Iterable[str]) -> None:
        self.alphabet = "".join(sorted(set(alphabet)))
        if not self.alphabet:
            raise DistillError(
                "a character tokenizer needs a non-empty alphabet; give it some text"
            )
        self.ids = {c: i for i, c in enumerate(self.alphabet)}
        self.vocab_size = len(self.alphabet)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        """The alphabet of every character in ``texts``."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        return cls(chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.ids[c] for c in text]
        except KeyError as err:
            raise DistillError(
                f"character {err.args[0]!r} is not in the tokenizer's alphabet of {self.vocab_size}; "
                "normalise the text to the training corpus's characters"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.alphabet[int(i)] for i in ids)

    def token_texts(self) -> list[str]:
        """The text of each id: its character."""
        return list(self.alphabet)

    def encode_spans(self, text: str) -> tuple[list[int], list[int]]:
        """``(ids, ends)``: token ``k`` is character ``k``, ending at offset ``k + 1``."""
        return self.encode(text), list(range(1, len(text) + 1))

    def token_chars(self) -> Tensor:
        """Characters per token: 1 each."""
        return torch.ones(self.vocab_size, dtype=torch.int64)


def pack_blocks(ids: Sequence[int] | Tensor, block_size: int) -> Tensor:
    """``(N, block_size + 1)`` int64 blocks of ``ids``, block ``n`` starting at ``n * block_size``;
    a tail too short for a whole block is dropped."""
    ids = torch.as_tensor(ids, dtype=torch.int64)
    count = (len(ids) - 1) // block_size
    if count < 1:
        raise DistillError(
            f"a text of {len(ids)} tokens is too short for one block of {block_size + 1}; use a "
            "smaller block_size or more text"
        )
    return ids.unfold(0, block_size + 1, block_size)[:count].clone()


def prompt_response_rows(
    pairs: Sequence[tuple[str, str]], tokenizer: LMTokenizer, max_length: int, pad_id: int = 0
) -> dict[str, Tensor]:
    """``input_ids``, ``labels`` (``-100`` on the prompt and the padding) and ``attention_mask``,
    ``(N, max_length)`` each, for (prompt, response) pairs; a longer row is cut on the right."""
    ids = torch.full((len(pairs), max_length), pad_id, dtype=torch.int64)
    labels = torch.full_like(ids, IGNORE)
    mask = torch.zeros_like(ids)
    for row, (prompt, response) in enumerate(pairs):
        p, r = tokenizer.encode(prompt), tokenizer.encode(response)
        tokens = (p + r)[:max_length]
        n = len(tokens)
        ids[row, :n] = torch.tensor(tokens, dtype=torch.int64)
        mask[row, :n] = 1
        labels[row, len(p) : n] = ids[row, len(p) : n]
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class LMDataset:
    """Rows of token ids in memory (``input_ids``, ``labels``, optional ``attention_mask``), batched
    by gathering. ``num_classes`` is the vocabulary size: models are built for it."""

    def __init__(
        self,
        input_ids: Tensor,
        tokenizer: LMTokenizer,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
        name: str = "lm",
    ) -> None:
        if input_ids.ndim != 2 or len(input_ids) == 0:
            raise DistillError(
                f"LM dataset {name!r} needs rows of token ids (N, L) with N >= 1, got "
                f"{tuple(input_ids.shape)}; give it more text"
            )
        self.input_ids = input_ids
        self.labels = input_ids.clone() if labels is None else labels
        self.attention_mask = attention_mask
        if self.attention_mask is not None:
            self.labels = self.labels.masked_fill(self.attention_mask == 0, IGNORE)
        self.tokenizer = tokenizer
        self.name = name
        self.num_classes = tokenizer.vocab_size
        self.chars = self._chars()

    def _chars(self) -> Tensor:
        """Characters covered by each row's scored targets ``labels[:, 1:]``."""
        targets = self.labels[:, 1:]
        valid = targets != IGNORE
        per_token = self.tokenizer.token_chars()[targets.clamp_min(0)]
        return (per_token * valid).sum(1)

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> list[int]:
        if self.attention_mask is None:
            return [self.input_ids.shape[1]] * len(self)
        return self.attention_mask.sum(1).tolist()

    def batch(self, idx: Tensor) -> dict[str, Tensor]:
        out = {
            "input_ids": self.input_ids[idx],
            "labels": self.labels[idx],
            "index": idx,
            "chars": self.chars[idx],
        }
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask[idx]
        return out

    def loader(self, batch_size: int, sampler: Iterable[int] | None = None) -> Iterator[Any]:
        """Batches in ``sampler``'s order (index order when None)."""
        if batch_size <= 0:
            raise DistillError(f"batch_size must be positive, got {batch_size}; use e.g. 32")
        return _Batches(self, batch_size, sampler)

    def subset(self, n: int, seed: int = 0) -> LMDataset:
        """``n`` rows drawn at random with ``seed``, kept in corpus order."""
        if not 0 < n <= len(self):
            raise DistillError(
                f"subset size {n} is out of range for dataset {self.name!r} with {len(self)} rows; "
                f"use 1..{len(self)}"
            )
        pick = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort()
        return self._take(pick.values)

    def _take(self, idx: Tensor) -> LMDataset:
        mask = None if self.attention_mask is None else self.attention_mask[idx]
        return LMDataset(self.input_ids[idx], self.tokenizer, self.labels[idx], mask, self.name)

    def __repr__(self) -> str:
        n, length = self.input_ids.shape
        return f"LMDataset({self.name!r}, rows={n}, length={length}, vocab={self.num_classes})"


class _Batches:
    """A re-iterable pass over an :class:`LMDataset` in a fixed order."""

    def __init__(self, data: LMDataset, batch_size: int, order: Iterable[int] | None) -> None:
        self.data, self.batch_size, self.order = data, batch_size, order

    def __len__(self) -> int:
        n = len(self.order) if self.order is not None else len(self.data)  # type: ignore[arg-type]
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        order = list(self.order) if self.order is not None else range(len(self.data))
        for start in range(0, len(order), self.batch_size):
            idx = torch.as_tensor(order[start : start + self.batch_size], dtype=torch.int64)
            yield self.data.batch(idx)
