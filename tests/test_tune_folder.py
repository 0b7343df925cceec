"""distill tune's study folder: another study's trials, a training run or a changed recipe are never
written over or mixed in; the refusal is one line and the folder is left as it was."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from distill.cli import main
from helpers import tiny_recipe_dict

pytest.importorskip("optuna", reason="distill tune needs the tune extra (optuna)")

from distill.tune import tune  # noqa: E402

QUIET = Console(file=io.StringIO())


def recipe_file(tmp_path: Path, name: str = "tiny", **train: object) -> Path:
    recipe = tiny_recipe_dict(tmp_path / "run", name=name)
    recipe["data"].update(train_subset=96, test_subset=32)
    recipe["train"].update(batch_size=32, eval_batch_size=32, **train)
    recipe["tune"] = {
        "params": [{"path": "train.lr", "low": 0.01, "high": 0.5, "log": True}],
        "trials": 1,
        "validation": 32,
        "out": str(tmp_path / "study"),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def refused(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def study(tmp_path) -> Path:
    tune(recipe_file(tmp_path), console=QUIET)
    return tmp_path / "study"


def test_a_folder_holding_another_study_is_refused(tmp_path, study, capsys) -> None:
    before = fingerprint(study)
    other = recipe_file(tmp_path, name="other")
    err = refused(["tune", str(other)], capsys)
    assert "holds the study 'tiny', not 'other'" in err and "--out" in err
    assert fingerprint(study) == before  # trials/000 and best.yaml of 'tiny' untouched


def test_a_changed_recipe_is_refused_but_more_trials_resume(tmp_path, study, capsys) -> None:
    before = fingerprint(study)
    recipe = recipe_file(tmp_path, epochs=2)
    err = refused(["tune", str(recipe)], capsys)
    assert "train.epochs (1 -> 2)" in err and "undo the change" in err
    assert fingerprint(study) == before
    recipe = recipe_file(tmp_path)  # the same recipe, a wider range, one more trial: resumes
    assert main(["tune", str(recipe), "tune.params.0.high=0.9", "--trials", "2"]) == 0
    assert sorted(p.name for p in (study / "trials").iterdir()) == ["000", "001"]


def test_a_training_run_folder_is_refused(tmp_path, capsys) -> None:
    recipe = recipe_file(tmp_path)
    assert main(["train", str(recipe)]) == 0
    run = tmp_path / "run"
    before = fingerprint(run)
    err = refused(["tune", str(recipe), "--out", str(run)], capsys)
    assert "holds a training run" in err and "new or empty folder" in err
    assert fingerprint(run) == before


def test_a_journal_cut_short_by_a_kill_resumes(tmp_path, study, capsys) -> None:
    journal = study / "study.journal"
    journal.write_bytes(
        journal.read_bytes() + b'{"op_code": 5, "worker_id": "x", "tri'
    )  # torn write
    recipe = recipe_file(tmp_path)
    assert main(["tune", str(recipe), "--trials", "2"]) == 0, capsys.readouterr().err
    assert "cut short" in capsys.readouterr().out
    assert sorted(p.name for p in (study / "trials").iterdir()) == ["000", "001"]


def test_a_damaged_journal_is_refused_and_left_as_it_is(tmp_path, study, capsys) -> None:
    journal = study / "study.journal"
    journal.write_bytes(b"garbage\n" + journal.read_bytes())
    before = fingerprint(study)
    err = refused(["tune", str(recipe_file(tmp_path))], capsys)
    assert "study.journal is damaged (line 1 is not JSON)" in err
    assert fingerprint(study) == before


def test_trial_runs_the_journal_does_not_list_are_not_overwritten(tmp_path, study, capsys) -> None:
    journal = study / "study.journal"
    journal.write_bytes(
        journal.read_bytes().split(b"\n")[0] + b"\n"
    )  # the study, none of its trials
    before = fingerprint(study)
    err = refused(["tune", str(recipe_file(tmp_path))], capsys)
    assert "trials/000 is the run of no trial in the journal" in err
    assert fingerprint(study) == before


def test_a_study_whose_first_trial_failed_takes_the_fixed_recipe(tmp_path, capsys) -> None:
    recipe = recipe_file(tmp_path)
    err = refused(["tune", str(recipe), "tune.validation=100000"], capsys)  # more than 60k
    assert "data.validation=100000" in err
    assert main(["tune", str(recipe)]) == 0, (
        capsys.readouterr().err
    )  # nothing finished: not refused
    assert "complete" in (tmp_path / "study" / "trials.md").read_text()
