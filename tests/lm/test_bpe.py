"""The byte-level BPE of the Hugging Face path: deterministic, round trips, characters per token for
bits per character, and a Hugging Face tokenizer that saves."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.data import build_dataset
from distill.data.bpe import train_bpe
from distill.errors import DistillError
from lm.lm_helpers import corpus, play

pytest.importorskip("tokenizers")


def test_bpe_is_deterministic_and_round_trips():
    texts = [play(i) for i in range(3)]
    one, two = train_bpe(texts, 300), train_bpe(list(texts), 300)
    assert one.tokenizer.get_vocab() == two.tokenizer.get_vocab()
    sample = play(9)
    ids = one.encode(sample)
    assert one.decode(ids) == sample and len(ids) < len(sample)  # merges shorten the text
    assert int(one.token_chars()[ids].sum()) == len(sample)  # every character counted once
    with pytest.raises(DistillError, match="vocab_size=100"):
        train_bpe(texts, 100)


def test_shakespeare_bpe_blocks_count_characters(tmp_path: Path):
    root = corpus(tmp_path)
    data = build_dataset(
        "shakespeare", "train", str(root), block_size=8, tokenizer="bpe", vocab_size=300
    )
    assert (root / "bpe-300.json").is_file() and data.num_classes == 300
    text = data.tokenizer.decode(data.input_ids[0].tolist())
    assert (root / "train.txt").read_text().startswith(text)
    # chars: the characters of the 8 scored tokens (all but the first of the block)
    assert int(data.chars[0]) == len(text) - len(
        data.tokenizer.decode(data.input_ids[0, :1].tolist())
    )
    again = build_dataset(
        "shakespeare", "train", str(root), block_size=8, tokenizer="bpe", vocab_size=300
    )
    assert again.input_ids.equal(data.input_ids)  # read back from bpe-300.json


def test_bpe_saves_as_a_hugging_face_tokenizer(tmp_path: Path):
    transformers = pytest.importorskip("transformers")
    tok = train_bpe([play(0)], 280)
    tok.hf().save_pretrained(tmp_path)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.encode("Good night, sweet lady.") == tok.encode("Good night, sweet lady.")
