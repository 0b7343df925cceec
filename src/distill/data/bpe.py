"""A byte-level BPE tokenizer trained deterministically on a corpus with Hugging Face ``tokenizers`` (the
``text`` extra), for language models on the Hugging Face path.

:func:`bpe_tokenizer` trains one of ``vocab_size`` entries (the 256 byte symbols first) on
``train.txt`` of a corpus folder once and keeps it there as ``bpe-<vocab_size>.json``; later calls read
that file. :meth:`BPETokenizer.hf` wraps it as a ``PreTrainedTokenizerFast`` for ``save_pretrained``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distill.errors import DistillError

TEXT_EXTRA_HINT = "pip install 'distill[text]'"


def _tokenizers() -> Any:
    try:
        return importlib.import_module("tokenizers")
    except ImportError:
        raise DistillError(
            f"tokenizer=bpe needs the tokenizers package, which is not installed; {TEXT_EXTRA_HINT}"
        ) from None


class BPETokenizer:
    """A trained ``tokenizers.Tokenizer`` with the LM dataset interface (``encode``, ``decode``,
    ``token_chars``, ``vocab_size``)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = int(tokenizer.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def encode_spans(self, text: str) -> tuple[list[int], list[int]]:
        """``(ids, ends)``: the ids and the character offset just past each token (``offsets``)."""
        encoding = self.tokenizer.encode(text)
        return list(encoding.ids), [end for _, end in encoding.offsets]

    def token_texts(self) -> list[str]:
        """The text of each id alone, its bytes read as UTF-8; a byte that is not a whole character
        reads as a lone surrogate (``surrogateescape``), so every id keeps a distinct text."""
        to_byte = {char: byte for byte, char in byte_symbols().items()}
        texts = []
        for i in range(self.vocab_size):
            symbols = self.tokenizer.id_to_token(i) or ""
            raw = bytes(to_byte[c] for c in symbols if c in to_byte)
            texts.append(raw.decode("utf-8", errors="surrogateescape"))
        return texts

    def decode(self, ids: Iterable[int]) -> str:
        return str(self.tokenizer.decode([int(i) for i in ids]))

    def token_chars(self) -> Tensor:
        """Bytes per token (a byte-level symbol stands for one byte): characters for ASCII text."""
        tokens = [self.tokenizer.id_to_token(i) for i in range(self.vocab_size)]
        return torch.tensor([len(t) for t in tokens], dtype=torch.int64)

    def hf(self) -> Any:
        """A ``transformers.PreTrainedTokenizerFast`` of this tokenizer (``save_pretrained`` writes it)."""
        from distill.models.hf import _transformers

        return _transformers().PreTrainedTokenizerFast(tokenizer_object=self.tokenizer)


def byte_symbols() -> dict[int, str]:
    """The byte-level alphabet (GPT-2's, which ``tokenizers``' ``ByteLevel`` uses): each byte's symbol;
    printable bytes stand for themselves, the others are shifted past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + shift)
            shift += 1
    return symbols


def train_bpe(texts: Iterable[str], vocab_size: int) -> BPETokenizer:
    """Byte-level BPE of ``vocab_size`` entries (> 256) trained on ``texts``; the same texts give the
    same tokenizer."""
    tk = _tokenizers()
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size <= 256:
        raise DistillError(
            f"bpe: vocab_size={vocab_size!r} must be an int above 256 (the byte symbols); use e.g. 512"
        )
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return BPETokenizer(tokenizer)


def bpe_tokenizer(folder: Path, vocab_size: int = 512) -> BPETokenizer:
    """The BPE of ``folder/train.txt``, trained on first use and kept as ``folder/bpe-<vocab_size>.json``."""
    tk = _tokenizers()
    saved = folder / f"bpe-{vocab_size}.json"
    if saved.is_file():
        return BPETokenizer(tk.Tokenizer.from_file(str(saved)))
    text = (folder / "train.txt").read_text(encoding="utf-8")
    tokenizer = train_bpe(text.split("\n\n"), vocab_size)
    tmp = folder / f".{saved.name}.tmp"
    tokenizer.tokenizer.save(str(tmp))
    tmp.replace(saved)
    return tokenizer
