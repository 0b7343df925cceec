"""``distill train --resume`` checks what it resumes: a folder with no run, or a recipe changed in a way
that breaks exactness, is one error line (exit 2) and leaves the run as it was, recipe.yaml included."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from distill.cli import main
from helpers import tiny_recipe_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run with a KD term (1 epoch, 4 steps), trained once for the module."""
    root = tmp_path_factory.mktemp("trained")
    recipe = tiny_recipe_dict(
        root / "run",
        teacher={"name": "cnn", "options": {"channels": [4, 8]}},
        distill={"terms": [{"loss": "kd", "options": {"temperature": 2.0}}]},
    )
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["train", str(path)]) == 0
    return root


@pytest.fixture
def run(trained, tmp_path) -> tuple[Path, Path]:
    """A copy of the trained run and of its recipe file, pointed at the copy."""
    shutil.copytree(trained / "run", tmp_path / "run")
    recipe = yaml.safe_load((trained / "recipe.yaml").read_text())
    recipe["output"] = str(tmp_path / "run")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return tmp_path / "run", path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _one_error_line(err: str, *needles: str) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    "override, key",
    [
        ("student.options.channels=[4,16]", "student.options.channels"),  # another architecture
        ("train.batch_size=32", "train.batch_size"),  # the data position no longer matches
        ("distill.terms.0.options.temperature=4.0", "distill.terms.0.options.temperature"),
        ("train.epochs=2", "train.epochs"),  # the LR schedule spans the run's steps
        ("train.lr=0.1", "train.lr"),
    ],
)
def test_a_change_that_breaks_exactness_is_refused(capsys, run, override, key):
    run_dir, recipe = run
    before = _snapshot(run_dir)
    assert main(["train", str(recipe), override, "--resume"]) == 2
    _one_error_line(capsys.readouterr().err, key, "cannot resume", "undo the change")
    assert _snapshot(run_dir) == before  # recipe.yaml, checkpoints and metrics untouched


def test_several_changes_are_named_in_one_line(capsys, run):
    run_dir, recipe = run
    overrides = ["train.batch_size=32", "train.lr=0.1", "train.seed=3", "train.momentum=0.5"]
    assert main(["train", str(recipe), *overrides, "--resume"]) == 2
    _one_error_line(capsys.readouterr().err, "train.batch_size (64 -> 32)", "and 1 more")


def test_settings_that_cannot_change_the_result_may_change(capsys, run):
    run_dir, recipe = run
    allowed = ["train.log_every=1", "train.keep_checkpoints=1", "description=again"]
    assert main(["train", str(recipe), *allowed, "--resume"]) == 0, capsys.readouterr().err
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert saved["train"]["log_every"] == 1 and saved["description"] == "again"


def test_the_loader_workers_may_change(capsys, run):
    """Workers decode items; the sampler in the main process fixes the order, so resuming with other
    loader settings gives the same run."""
    run_dir, recipe = run
    allowed = ["data.num_workers=1", "data.prefetch_factor=2", "data.pin_memory=false"]
    assert main(["train", str(recipe), *allowed, "--resume"]) == 0, capsys.readouterr().err
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["data"]["num_workers"] == 1


def test_nothing_to_resume_where_no_run_exists(capsys, run, tmp_path):
    _, recipe = run
    typo = tmp_path / "rn"
    assert main(["train", str(recipe), f"output={typo}", "--resume"]) == 2
    _one_error_line(capsys.readouterr().err, f"nothing to resume in {typo}")
    assert not typo.exists()


def test_a_run_without_its_recipe_is_refused(capsys, run):
    run_dir, recipe = run
    (run_dir / "recipe.yaml").unlink()
    before = _snapshot(run_dir)
    assert main(["train", str(recipe), "--resume"]) == 2
    _one_error_line(capsys.readouterr().err, "recipe.yaml is missing", "--overwrite")
    assert _snapshot(run_dir) == before


def test_a_run_killed_before_its_first_checkpoint_resumes(capsys, run):
    """recipe.yaml and metrics lines but no checkpoint: --resume starts over and logs each step once."""
    run_dir, recipe = run
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "model.safetensors").unlink()
    assert main(["train", str(recipe), "--resume"]) == 0, capsys.readouterr().err
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [r["step"] for r in map(json.loads, lines) if r["event"] == "train"]
    assert steps == [2, 4]  # log_every 2, 4 steps: once each
