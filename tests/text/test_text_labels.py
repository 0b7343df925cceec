"""A text row without a label, or with a label that is neither a class name nor an integer id, is an error
naming the file and line: it used to become a class of its own ('' or 'None') and shift every label."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from distill.data.text import text_file
from distill.errors import DistillError


def _error(**options: str) -> str:
    with pytest.raises(DistillError) as info:
        text_file(**options)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("suffix", "content", "line"),
    [
        (".csv", "text,label\ngood film,pos\nbad film,\nfun,pos\n", 3),  # empty cell
        (".csv", "text,label\ngood film,pos\nfun,neg\nno label here\n", 4),  # short row
        (
            ".csv",
            'text,label\n"a film\nover two lines",pos\ndull,"  "\n',
            4,
        ),  # blank, after a 2-line row
        (".tsv", "text\tlabel\ngood film\tpos\nbad film\t\n", 3),
        (".jsonl", '{"text": "good", "label": "pos"}\n\n{"text": "bad"}\n', 3),  # no key
        (".jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad", "label": null}\n', 2),
    ],
)
def test_missing_label_names_file_and_line(
    tmp_path: Path, suffix: str, content: str, line: int
) -> None:
    (tmp_path / f"train{suffix}").write_text(content)
    message = _error(root=str(tmp_path), train_file=f"train{suffix}")
    assert message.startswith(f"{tmp_path / f'train{suffix}'}:{line}: no label in column 'label'")
    assert "fill it in or drop the row" in message


@pytest.mark.parametrize("label", ["1.5", "1.0", "true", "[1]", '{"a": 1}'])
def test_malformed_json_label_names_file_and_line(tmp_path: Path, label: str) -> None:
    (tmp_path / "train.jsonl").write_text(
        f'{{"text": "a", "label": 0}}\n{{"text": "b", "label": {label}}}\n'
    )
    message = _error(root=str(tmp_path), train_file="train.jsonl")
    assert re.search(r"train\.jsonl:2: label .* is neither a class name nor an integer id", message)


def test_unknown_label_in_the_test_file_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,label\na,pos\nb,neg\n")
    (tmp_path / "test.csv").write_text("text,label\nc,neg\nd,good\n")
    message = _error(split="test", root=str(tmp_path))
    assert message.startswith(f"{tmp_path / 'test.csv'}:3: label 'good' is not one of the classes")


def test_test_split_checks_the_train_file_it_takes_classes_from(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,label\na,pos\nb,\n")
    (tmp_path / "test.csv").write_text("text,label\nc,neg\n")
    assert _error(split="test", root=str(tmp_path)).startswith(
        f"{tmp_path / 'train.csv'}:3: no label"
    )


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": 0}\n["b", 1]\n')
    assert "train.jsonl:2 is not a JSON object (got list)" in _error(
        root=str(tmp_path), train_file="train.jsonl"
    )


def test_good_files_still_read(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    data = text_file(root=str(tmp_path), train_file="train.jsonl")
    assert data.classes == ["0", "1"] and data.labels.tolist() == [1, 0]
