"""distill.io: files written whole, and the writers that go through it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import distill.io as dio
from distill.compare.runs import record_settings, settings_match
from distill.report import write_report


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    dio.write_json(path, {"v": 1})

    def torn(tmp: str) -> None:
        Path(tmp).write_text('{"v": ')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        dio.atomic_write(path, torn)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert path.read_text().endswith("}\n")


def test_reports_and_compare_settings_are_written_whole(tmp_path, monkeypatch):
    """report.json / report.md / report.html and compare.json go through atomic_write (they used to be
    written in place, so a crash could leave a torn file)."""
    written = []
    original = dio.atomic_write

    def recording(path, write):
        written.append(path.name)
        original(path, write)

    monkeypatch.setattr(dio, "atomic_write", recording)
    row = {"name": "s", "accuracy": 90.0, "params": 10, "size_bytes": 40, "latency_ms_b1": 0.1}
    write_report(tmp_path / "report", [row], "title", html=True)
    record_settings(tmp_path, {"epochs": 1})
    assert {"report.json", "report.md", "report.html", "compare.json"} <= set(written)
    assert json.loads((tmp_path / "report" / "report.json").read_text())["rows"] == [row]
    (tmp_path / "artefact").touch()
    assert settings_match(tmp_path, {"epochs": 1}, "artefact")
