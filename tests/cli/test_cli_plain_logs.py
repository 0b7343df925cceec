"""Output that is not a terminal (a pipe, ``nohup``, a scheduler's log file): training prints whole
progress lines instead of a redrawn bar, and ``distill list`` prints whole tab-separated rows
(issue 21, item 7)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml
from rich.console import Console

from distill.errors import DistillError
from distill.train.progress import PlainProgress, make_progress
from helpers import tiny_recipe_dict

STEP_LINE = re.compile(r"^epoch (\d)/2 step (\d+)/8 \(\d+%\) loss=\S+ .*\| \S+ steps/s, elapsed ")


def distill(*argv: str, cwd, **env: str) -> subprocess.CompletedProcess:
    """``python -m distill ...`` with stdout and stderr to pipes, as under nohup or a scheduler."""
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    environ.update({"PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **env})
    return subprocess.run(
        [sys.executable, "-m", "distill", *argv],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def tiny_yaml(tmp_path):
    recipe = tiny_recipe_dict(tmp_path / "run")
    recipe["train"].update(progress=True, epochs=2, log_every=2)  # 4 steps an epoch, 8 in all
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_piped_training_prints_step_lines(tmp_path, tiny_yaml):
    done = distill("train", str(tiny_yaml), cwd=tmp_path, DISTILL_PROGRESS_SECONDS="0")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    steps = [int(m.group(2)) for m in map(STEP_LINE.match, lines) if m]
    assert steps == [2, 4, 6, 8], done.stdout  # every train.log_every steps, each line whole
    assert "step 8/8 (100%)" in next(
        line for line in lines if STEP_LINE.match(line) and "8/8" in line
    )
    assert not any(ch in done.stdout for ch in "━…\r\x1b"), "a bar was drawn into the pipe"
    assert lines[-1].startswith("done: ")
    # each epoch's evaluation line comes after its last step line
    order = [m.group(0) for m in map(re.compile(r"^epoch \d(:|/\d step \d)").match, lines) if m]
    assert order == [
        "epoch 1/2 step 2",
        "epoch 1/2 step 4",
        "epoch 1:",
        "epoch 2/2 step 6",
        "epoch 2/2 step 8",
        "epoch 2:",
    ]


def test_piped_training_throttles_lines_to_the_interval(tmp_path, tiny_yaml):
    """The default interval (30 s) is longer than the run: only the final, complete line is printed."""
    done = distill("train", str(tiny_yaml), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    steps = [m.group(0) for m in map(STEP_LINE.match, done.stdout.splitlines()) if m]
    assert len(steps) == 1 and "step 8/8 (100%)" in steps[0], done.stdout


def test_plain_progress_says_where_a_stopped_run_stopped():
    console = Console(record=True, width=40, force_terminal=False)
    with PlainProgress(console, every_s=3600) as progress:
        bar = progress.add_task("train", total=100, completed=10, info="")
        progress.update(bar, description="epoch 1/1")
        progress.update(bar, info="loss=0.5")
        progress.update(bar, completed=11)
        progress.update(bar, completed=12)
    text = console.export_text()
    assert text.splitlines() == [text.splitlines()[0]]  # one line, not cut at 40 columns
    assert text.startswith("epoch 1/1 step 12/100 (12%) loss=0.5 | ")
    assert "eta " in text


def test_a_terminal_still_gets_the_rich_bar():
    assert not isinstance(make_progress(True, Console(force_terminal=True)), PlainProgress)
    assert isinstance(make_progress(True, Console(force_terminal=False)), PlainProgress)
    assert not isinstance(make_progress(False, Console(force_terminal=False)), PlainProgress)


def test_bad_progress_interval_is_one_line(monkeypatch):
    monkeypatch.setenv("DISTILL_PROGRESS_SECONDS", "soon")
    with pytest.raises(DistillError, match="DISTILL_PROGRESS_SECONDS='soon'.*e.g. 30"):
        make_progress(True, Console(force_terminal=False))


@pytest.mark.parametrize("what", ["losses", "models"])
def test_piped_list_rows_are_whole(tmp_path, what):
    """``distill list losses | cat``: no cell cut with '…', no cell wrapped over lines."""
    done = distill("list", what, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout and "┃" not in done.stdout
    lines = done.stdout.splitlines()
    header = lines[0].split("\t")
    assert header[0] == "name"
    assert all(len(line.split("\t")) == len(header) for line in lines), done.stdout
    if what == "losses":
        hinton = next(line for line in lines if line.startswith("kd\t"))
        assert "Distilling the Knowledge in a Neural Network" in hinton
