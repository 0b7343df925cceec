"""A small generated corpus in the layout of the prepared Shakespeare folder (train/val/test/milton.txt),
so LM tests never need the download."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = (
    "the king queen lord lady good my thy thou art love night day sweet death heart fair noble "
    "speak come go hence what why now here there true false friend sword crown blood"
).split()
SPEAKERS = ("Ham.", "Hor.", "Oph.", "King.", "Queen.")


def play(seed: int, lines: int = 60) -> str:
    """A play-shaped text: speaker lines followed by verse of random words."""
    rng = random.Random(seed)
    out = [f"ACT {seed}.", ""]
    for _ in range(lines):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
        out += [rng.choice(SPEAKERS), words[0].upper() + words[1:] + rng.choice(".,;!?"), ""]
    return "\n".join(out)


def write_corpus(folder: Path, train_plays: int = 4) -> Path:
    """train.txt (``train_plays`` plays), val.txt, test.txt (one play each) and milton.txt in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text("\n\n".join(play(i) for i in range(train_plays)))
    (folder / "val.txt").write_text(play(100))
    (folder / "test.txt").write_text(play(101))
    (folder / "milton.txt").write_text(play(102).lower())
    return folder


def corpus(folder: Path) -> Path:
    """The corpus in ``folder``, written on first use."""
    return folder if (folder / "train.txt").is_file() else write_corpus(folder)
