"""``distill compare``: a thin shell over ``distill.compare.compare``; bad input is one line, exit 2."""

from __future__ import annotations

import json

import pytest
import yaml

from distill.cli import commands, main
from helpers import tiny_recipe_dict

TEACHER = {"name": "cnn", "options": {"channels": [8, 16]}}


@pytest.fixture(autouse=True)
def _setup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(commands.console, "_width", 200)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def write(tmp_path, name: str, data: dict) -> str:
    (tmp_path / name).write_text(yaml.safe_dump(data))
    return str(tmp_path / name)


def test_list_shows_every_pipeline_and_the_defaults(capsys):
    from distill.compare import DEFAULT_PIPELINES, PIPELINES, TASK_DEFAULT_PIPELINES

    code, out, _ = run_cli(capsys, "compare", "fashion_mnist/kd", "--list")
    assert code == 0
    lines = {line.split(":")[0]: line for line in out.splitlines()}
    for name in PIPELINES.names():
        head = next(h for h in lines if h.split(" ")[0] == name)
        assert ("(default" in head) == (name in DEFAULT_PIPELINES), head
        text = "text_classification default" in head
        assert text == (name in TASK_DEFAULT_PIPELINES["text_classification"]), head


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--pipelines", "teacher,student-kd-int9"], ["'student-kd-int9'", "Did you mean"]),
        ([], ["teacher weights 'runs/fashion_mnist-teacher'", "--teacher-recipe"]),
        (["--bench-results", "nowhere.json"], ["bench result nowhere.json not found"]),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_written(capsys, tmp_path, argv, needles):
    code, _, err = run_cli(capsys, "compare", "fashion_mnist/kd", *argv)
    line = one_error_line(err)
    assert code == 2 and all(n in line for n in needles), line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_a_recipe_without_kd_terms_is_refused(capsys, tmp_path):
    scratch = write(tmp_path, "scratch.yaml", tiny_recipe_dict(tmp_path / "x"))
    code, _, err = run_cli(capsys, "compare", scratch)
    assert code == 2 and "needs a KD recipe" in one_error_line(err)


@pytest.mark.integration
def test_compare_writes_the_reports(capsys, tmp_path):
    teacher = write(tmp_path, "t.yaml", tiny_recipe_dict(tmp_path / "x", name="t", student=TEACHER))
    kd = tiny_recipe_dict(
        tmp_path / "x",
        name="kd",
        teacher={**TEACHER, "weights": "missing"},
        distill={"terms": [{"loss": "kd"}]},
    )
    argv = ["compare", write(tmp_path, "kd.yaml", kd), "train.lr=0.01", "--teacher-recipe", teacher]
    code, out, err = run_cli(capsys, *argv, "--pipelines", "teacher", "--out", "cmp")
    assert code == 0, err
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert [r["pipeline"] for r in report["rows"]] == ["teacher"]
    assert "train.lr=0.01" in report["overrides"]
    assert {"report.md", "report.html", "accuracy_latency.png"} <= {
        p.name for p in (tmp_path / "cmp").iterdir()
    }
    assert "cmp/report.md" in out
