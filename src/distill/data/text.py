"""Labelled text for classification: CSV/TSV/JSONL files and Hugging Face datasets (Rotten Tomatoes:
``data/rotten_tomatoes.py``).

A :class:`TextDataset` holds raw texts and int labels; once it has a tokenizer (``set_tokenizer``; recipes
take the student's) its loader tokenises each batch and pads it to the batch's longest text (dynamic
padding). Batches are dicts ``{"input_ids": int64 [B, T], "attention_mask": int64 [B, T] (1 real, 0 pad),
"token_type_ids"?: [B, T], "label": int64 [B], "index": int64 [B]}``.
"""

from __future__ import annotations

import csv
import json
import os
import random
import reprlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from distill.data import DATASETS
from distill.data.folder import HFImageDataset, image_size_of
from distill.data.tensor import check_split
from distill.errors import DistillError


class TextDataset(Dataset):
    """Texts and int64 labels in memory; ``classes`` names the labels (``num_classes = len(classes)``)."""

    def __init__(
        self,
        texts: Sequence[str],
        labels: Sequence[int] | torch.Tensor,
        classes: Sequence[str],
        name: str = "text",
        tokenizer: Any = None,
        max_length: int = 128,
    ) -> None:
        if len(texts) == 0:
            raise DistillError(f"dataset {name!r} is empty (0 texts); point it at a file with rows")
        self.texts = list(texts)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.classes = list(classes)
        self.name = name
        bad = [int(v) for v in self.labels if not 0 <= int(v) < len(self.classes)]
        if len(self.labels) != len(self.texts) or bad:
            raise DistillError(
                f"dataset {name!r}: labels must be one per text in [0, {len(self.classes)}), got "
                f"{len(self.labels)} labels for {len(self.texts)} texts{f' and label {bad[0]}' if bad else ''}; "
                "fix the labels or the classes"
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._lengths: tuple[tuple[int, int], list[int]] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def set_tokenizer(self, tokenizer: Any, max_length: int | None = None) -> TextDataset:
        """Use ``tokenizer`` (a Hugging Face tokenizer) in the loader; returns ``self``."""
        self.tokenizer = tokenizer
        self.max_length = max_length or self.max_length
        return self

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"text": self.texts[int(i)], "label": self.labels[int(i)], "index": int(i)}

    def lengths(self) -> list[int]:
        """Tokens per text as the loader will tokenise it (special tokens included, at most
        ``max_length``): what ``train.group_by_length`` groups by. Computed once per tokenizer."""
        self._need_tokenizer()
        key = (id(self.tokenizer), self.max_length)
        if self._lengths is None or self._lengths[0] != key:
            ids = self.tokenizer(self.texts, truncation=True, max_length=self.max_length)
            self._lengths = (key, [len(x) for x in ids["input_ids"]])
        return self._lengths[1]

    def _need_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise DistillError(
                f"text dataset {self.name!r} has no tokenizer; call dataset.set_tokenizer(tokenizer) "
                "(recipes use the student model's tokenizer)"
            )

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Tokenise a list of items, padded to the longest (at most ``max_length`` tokens)."""
        self._need_tokenizer()
        encoded = self.tokenizer(
            [item["text"] for item in items],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch = {k: v for k, v in encoded.items() if isinstance(v, torch.Tensor)}
        batch["label"] = torch.stack([torch.as_tensor(item["label"]) for item in items])
        batch["index"] = torch.tensor([int(item["index"]) for item in items])
        return batch

    def loader(
        self,
        batch_size: int,
        sampler: Sampler[int] | Sequence[int] | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        """A single-process DataLoader of tokenised, dynamically padded dict batches."""
        if batch_size <= 0:
            raise DistillError(f"batch_size must be positive, got {batch_size}; use e.g. 32")
        return DataLoader(
            self,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=shuffle,
            drop_last=drop_last,
            generator=generator,
            collate_fn=self.collate,
        )

    def subset(self, n: int, seed: int = 0) -> TextDataset:
        """A seeded subset of ``n`` items with classes interleaved (balanced as far as the data allows)."""
        if not 0 < n <= len(self):
            raise DistillError(
                f"subset size {n} is out of range for dataset {self.name!r} with {len(self)} items; "
                f"use 1..{len(self)}"
            )
        rng = random.Random(seed)
        by_class = [
            [i for i, y in enumerate(self.labels.tolist()) if y == c]
            for c in range(self.num_classes)
        ]
        for members in by_class:
            rng.shuffle(members)
        order = [i for group in zip_longest_flat(by_class) for i in group]
        keep = sorted(order[:n])
        return TextDataset(
            [self.texts[i] for i in keep], self.labels[keep], self.classes, self.name,
            self.tokenizer, self.max_length,
        )  # fmt: skip


def zip_longest_flat(groups: list[list[int]]) -> list[list[int]]:
    """Round-robin rows: ``[[a0, b0], [a1, b1], [a2]]`` for groups ``[[a0, a1, a2], [b0, b1]]``."""
    longest = max((len(g) for g in groups), default=0)
    return [[g[i] for g in groups if i < len(g)] for i in range(longest)]


# --- reading files ---------------------------------------------------------------------------


def read_rows(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[int]]:
    """Rows of a ``.csv``, ``.tsv`` or ``.jsonl`` file as dicts (column -> value), and the line each row
    ends on (1-based; a CSV header is line 1), for messages that point at a row."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(
            f"text file {path} not found; fix the path (train_file/test_file or root)"
        )
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    with path.open(encoding="utf-8", newline="") as f:
        if suffix in (".csv", ".tsv"):
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for row in reader:
                rows.append(row)
                lines.append(reader.line_num)
            return rows, lines
        if suffix in (".jsonl", ".json"):
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DistillError(
                        f"{path}:{number} is not a JSON object ({err.msg}); write one object per line"
                    ) from None
                if not isinstance(row, dict):
                    raise DistillError(
                        f"{path}:{number} is not a JSON object (got {type(row).__name__}); write one "
                        "object per line"
                    )
                rows.append(row)
                lines.append(number)
            return rows, lines
    raise DistillError(f"text file {path}: unknown format {suffix!r}; use .csv, .tsv or .jsonl")


def _column(rows: list[dict[str, Any]], column: str, option: str, path: Path) -> list[Any]:
    if not rows:
        raise DistillError(f"text file {path} has no rows; give a file with a header and data")
    if column not in rows[0]:
        present = ", ".join(map(repr, rows[0]))
        raise DistillError(
            f"text file {path} has no column {column!r} (columns: {present}); set {option} to one of them"
        )
    return [row.get(column) for row in rows]


def check_labels(values: Sequence[Any], column: str, where: Callable[[int], str]) -> None:
    """Refuse a missing (absent, null), empty or malformed (not a name or an integer id) label: it would
    become a class of its own (``''``, ``'None'``) and shift every label. ``where(i)`` names row i
    (``file:line``)."""
    for i, value in enumerate(values):
        at = where(i)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DistillError(
                f"{at}: no label in column {column!r} (empty or missing); fill it in or drop the row"
            )
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise DistillError(
                f"{at}: label {reprlib.repr(value)} in column {column!r} is neither a class name nor an "
                "integer id; write a name (pos) or an id (1)"
            )


def label_classes(values: Sequence[Any]) -> list[str]:
    """Class names for raw labels: ``0..max`` when every label is an integer, else the sorted names."""
    names = [str(v).strip() for v in values]
    if all(n.lstrip("-").isdigit() for n in names):
        return [str(i) for i in range(max(int(n) for n in names) + 1)]
    return sorted(set(names))


def encode_labels(
    values: Sequence[Any], classes: Sequence[str], where: str | Callable[[int], str]
) -> list[int]:
    """Class ids of raw labels; ``where`` names the source (or each row: ``file:line``) in errors."""
    index = {name: i for i, name in enumerate(classes)}
    out = []
    for i, value in enumerate(values):
        key = str(value).strip()
        if key not in index:
            at = where if isinstance(where, str) else where(i)
            raise DistillError(
                f"{at}: label {key!r} is not one of the classes {list(classes)}; fix the label or "
                "list every class in the dataset's classes option"
            )
        out.append(index[key])
    return out


def _labelled_rows(
    path: Path, text_column: str, label_column: str
) -> tuple[list[Any], list[Any], Callable[[int], str]]:
    """Texts, checked raw labels and ``where(i)``: ``file:line`` of row i, for messages."""
    rows, lines = read_rows(path)
    texts = _column(rows, text_column, "text_column", path)
    labels = _column(rows, label_column, "label_column", path)

    def where(i: int) -> str:
        return f"{path}:{lines[i]}"

    check_labels(labels, label_column, where)
    return texts, labels, where


@DATASETS.register(
    "text_file", family="text", description="CSV/TSV/JSONL files with a text and a label column"
)
def text_file(
    split: str = "train",
    root: str | None = None,
    train_file: str = "train.csv",
    test_file: str = "test.csv",
    text_column: str = "text",
    label_column: str = "label",
    classes: list[str] | None = None,
    max_length: int = 128,
) -> TextDataset:
    """Texts and labels from ``train_file``/``test_file`` (relative to ``root`` when given).

    Labels are class names or integer ids; ``classes`` fixes their order (default: integer ids
    ``0..max``, or the training file's sorted names, so both splits map names the same way). A row
    without a label, or with one that is neither a name nor an integer, is an error naming its line.
    """
    check_split(split)
    base = Path(root) if root else Path()
    path = base / (train_file if split == "train" else test_file)
    texts, labels, where = _labelled_rows(path, text_column, label_column)
    if classes is None:
        train_labels = (
            labels
            if split == "train"
            else _labelled_rows(base / train_file, text_column, label_column)[1]
        )
        classes = label_classes(train_labels)
    empty = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if empty is not None:
        raise DistillError(
            f"{where(empty)}: no text in column {text_column!r}; fill it in or drop the row"
        )
    return TextDataset(
        texts, encode_labels(labels, classes, where), classes, path.stem, None, max_length
    )


# --- Hugging Face datasets ------------------------------------------------------------------


@DATASETS.register(
    "hf_dataset",
    family="text, image",
    description="a Hugging Face `datasets` dataset: a hub name or a save_to_disk folder; text or "
    "images (needs datasets)",
)
def hf_dataset(
    split: str = "train",
    root: str | None = None,
    path: str = "",
    config: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    text_column: str = "text",
    label_column: str = "label",
    max_length: int = 128,
    image_column: str | None = None,
    image_size: int | tuple[int, int] = 32,
    grayscale: bool = False,
) -> TextDataset | HFImageDataset:
    """``datasets.load_dataset(path, config)[train_split or test_split]``, or the split of a
    ``DatasetDict`` saved with ``save_to_disk`` when ``path`` is a folder. Texts (``text_column``), or
    images when ``image_column`` is set or the text column is absent and a column holds
    ``datasets.Image`` values: decoded per item and resized to ``image_size``
    (:class:`~distill.data.folder.LazyImages`, by ``data.num_workers`` workers). Class names come from
    the label column's ``ClassLabel`` feature, else from its sorted values."""
    try:
        import datasets
    except ImportError:
        raise DistillError(
            f"dataset hf_dataset ({path!r}) needs the datasets package; pip install datasets (the "
            "hf-datasets extra), or save the data as CSV/JSONL and use text_file (images: image_folder)"
        ) from None
    if not path:
        raise DistillError(
            "hf_dataset needs path=<dataset name on the hub or a save_to_disk folder>, e.g. rotten_tomatoes"
        )
    wanted = train_split if check_split(split) == "train" else test_split
    if Path(path).expanduser().is_dir():
        part = _from_disk(datasets, Path(path).expanduser(), wanted)
    else:
        part = datasets.load_dataset(path, config, split=wanted, cache_dir=root)
    image_type = getattr(datasets, "Image", None)
    if image_column is None and text_column not in part.column_names and image_type is not None:
        image_column = next(
            (c for c, f in part.features.items() if isinstance(f, image_type)), None
        )
    columns = (image_column, "image_column") if image_column else (text_column, "text_column")
    for column, option in (columns, (label_column, "label_column")):
        if column not in part.column_names:
            raise DistillError(
                f"dataset {path!r} has no column {column!r} (columns: {part.column_names}); set {option}"
            )
    feature = part.features[label_column]
    if not hasattr(feature, "names"):
        check_labels(part[label_column], label_column, lambda i: f"dataset {path!r} row {i + 1}")
    classes = list(getattr(feature, "names", None) or label_classes(part[label_column]))
    labels = (
        part[label_column]
        if hasattr(feature, "names")
        else encode_labels(part[label_column], classes, path)
    )
    if image_column:
        size = image_size_of(image_size)
        return HFImageDataset(part, image_column, list(labels), classes, size, grayscale, path)
    return TextDataset(part[text_column], labels, classes, path, None, max_length)


def _from_disk(datasets: Any, folder: Path, split: str) -> Any:
    """Split ``split`` of the ``DatasetDict`` saved in ``folder`` (``save_to_disk``)."""
    try:
        saved = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DistillError(
            f"hf_dataset path {folder} is not a dataset saved with save_to_disk ({exc}); save a "
            "DatasetDict there or give a hub name"
        ) from None
    if not isinstance(saved, datasets.DatasetDict) or split not in saved:
        have = list(saved) if isinstance(saved, datasets.DatasetDict) else "one Dataset, no splits"
        raise DistillError(
            f"hf_dataset path {folder} has no split {split!r} (it holds {have}); save a DatasetDict "
            "with train and test splits, or set train_split/test_split"
        )
    return saved[split]
