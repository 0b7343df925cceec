"""The one assembly path: ``open_run`` reopens a finished run, ``distill eval`` survives a moved teacher,
``Distiller.setup(dry_run=True)`` leaves nothing behind, and nothing else in ``src/distill`` wires a
``Distiller`` or ``Trainer`` by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from distill.cli import commands, main
from distill.errors import DistillError
from helpers import tiny_recipe_dict

SRC = Path(__file__).resolve().parents[2] / "src" / "distill"
TEACHER = {"name": "cnn", "options": {"channels": [8, 16]}}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(commands.console, "_width", 160)


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory) -> tuple[Path, Path]:
    """A one-epoch KD run whose teacher is a weights file: ``(run_dir, teacher_file)``."""
    from distill import api
    from distill.models import build_model

    root = tmp_path_factory.mktemp("kd")
    torch.manual_seed(0)
    teacher = build_model("cnn", num_classes=10, in_channels=1, **TEACHER["options"])
    weights = root / "teacher.safetensors"
    save_file(teacher.state_dict(), str(weights))
    recipe = tiny_recipe_dict(
        root / "run",
        teacher={**TEACHER, "weights": str(weights)},
        distill={"task_weight": 0.5, "terms": [{"loss": "kd", "weight": 0.5}]},
    )
    from distill.config.schema import Recipe

    api.train(Recipe.model_validate(recipe))
    return root / "run", weights


def test_open_run_student_and_teacher(kd_run):
    import distill
    from distill import api
    from distill.config.run import Run, open_run

    run_dir, weights = kd_run
    assert distill.open_run is open_run and api.open_run is open_run
    run = open_run(run_dir)
    assert isinstance(run, Run) and run.teacher is None and run.notes == []
    assert not run.student.training
    best = json.loads((run_dir / "summary.json").read_text())["best"]
    metrics = run.task.evaluate(run.student, run.test_loader())
    assert metrics["top1"] == pytest.approx(best["top1"])  # the best checkpoint's weights

    with_teacher = open_run(run_dir, "last", teacher=True)
    teacher = with_teacher.teacher
    assert teacher is not None and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    from safetensors.torch import load_file

    saved = load_file(str(weights))
    assert all(torch.equal(v, saved[k]) for k, v in teacher.state_dict().items())

    with pytest.raises(DistillError, match="unknown checkpoint 'bset'.*Did you mean 'best'"):
        open_run(run_dir, "bset")


def test_eval_reports_agreement_then_a_note_when_the_teacher_file_is_gone(kd_run, capsys):
    run_dir, weights = kd_run
    assert main(["eval", str(run_dir)]) == 0
    with_teacher = capsys.readouterr().out
    assert "agreement" in with_teacher and "note:" not in with_teacher

    weights.unlink()  # the teacher moved since training; eval needs it only for agreement
    code = main(["eval", str(run_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "top1" in out and "agreement" not in out.split("note:")[0]
    assert f"note: agreement left out: teacher weights {weights} not found" in out.replace("\n", "")
    top1 = re.search(r"top1\s*│\s*([\d.]+)", out)
    assert top1 and top1.group(1) in with_teacher  # the student's metrics are the same

    from distill import api

    metrics = api.evaluate(run_dir)
    assert "agreement" not in metrics and metrics.notes == [
        f"agreement left out: teacher weights {weights} not found"
    ]


def _distiller(projector: str | None, student_width: int = 6):
    from distill.distiller import Distiller, Term
    from distill.losses import build_loss
    from distill.tasks import ClassificationTask

    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(4, student_width), nn.Linear(student_width, 3))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.Linear(5, 3))
    term = Term(build_loss("fitnet"), student="1", teacher="1", projector=projector)
    return Distiller(student, ClassificationTask(), teacher=teacher, terms=[term])


def _batch():
    return {
        "image": torch.rand(4, 4),
        "label": torch.tensor([0, 1, 2, 0]),
        "index": torch.arange(4),
    }


def test_setup_dry_run_keeps_nothing():
    distiller = _distiller("linear")
    before = {k: v.clone() for k, v in distiller.state_dict().items()}
    batch = _batch()
    rng = torch.get_rng_state()
    distiller.train()
    distiller.setup(batch, dry_run=True)
    assert torch.equal(
        torch.get_rng_state(), rng
    )  # projectors built and dropped under a forked RNG
    assert isinstance(distiller.trainable().projectors[0], nn.Identity)
    assert distiller.terms[0].projector == "linear"
    assert distiller.trainable().training  # modes restored
    after = distiller.state_dict()
    assert after.keys() == before.keys() and all(
        torch.equal(after[k], v) for k, v in before.items()
    )
    with pytest.raises(DistillError, match="call distiller.setup"):
        distiller(distiller.task.split(_batch()))
    distiller.setup(_batch())  # the real one builds the projector
    assert isinstance(distiller.trainable().projectors[0], nn.Linear)


def test_setup_dry_run_names_a_shape_mismatch_and_a_model_that_cannot_run():
    from distill.distiller import ExampleRunError

    with pytest.raises(DistillError, match=r"term 'fitnet'.*\(4, 6\).*\(4, 5\); add a projector"):
        _distiller(None).setup(_batch(), dry_run=True)
    bad = {**_batch(), "image": torch.rand(4, 7)}
    with pytest.raises(ExampleRunError, match=r"student cannot run on the data's inputs \[4, 7\]"):
        _distiller("linear").setup(bad, dry_run=True)


def test_only_the_assembly_path_constructs_distillers_and_trainers():
    """``grep -rn "Distiller(\\|Trainer(" src/distill``: constructions only in ``config/build.py`` (the
    other hits are the class statements and docstring examples)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0].strip()
            if re.search(r"\b(Distiller|Trainer)\(", code) and not code.startswith(
                (">>>", "...", "class ")
            ):
                found.append(f"{path.relative_to(SRC)}:{number}")
    assert found and all(f.startswith("config/build.py:") for f in found), found
