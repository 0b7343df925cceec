"""The recipe's ``export:``, ``qat:`` and ``compare:`` sections: the settings of ``distill export`` and
``distill compare`` live in the recipe, with the schema's defaults, and a flag given on the command line
overrides its setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from distill import api
from distill.cli import commands, main
from distill.config.load import load_recipe, recipe_to_yaml
from distill.config.resume import check_resume
from distill.config.schema import CompareSpec, ExportSpec, QatSpec
from distill.errors import DistillError
from helpers import tiny_recipe_dict

TEACHER = {"name": "cnn", "options": {"channels": [8, 16]}}


def test_defaults_are_the_commands_defaults(tmp_path):
    """No section means what the flags and keyword arguments meant before the sections existed."""
    recipe = load_recipe_dict(tmp_path, tiny_recipe_dict(tmp_path / "run"))
    assert recipe.export == ExportSpec() and recipe.qat == QatSpec()
    assert recipe.compare == CompareSpec()
    assert recipe.export.model_dump() == {
        "format": "onnx",
        "opset": None,
        "int8": False,
        "int8_mode": None,
        "calibration_batches": 8,
        "keep_first_last_float": None,
        "checkpoint": "best",
        "qat": False,
        "select": False,
        "targets": ["onnxruntime"],
        "budget": 1.0,
        "select_batch": 1,
        "select_threads": 1,
        "handback": False,
    }
    assert recipe.qat.model_dump() == {
        "epochs": 1,
        "lr": None,
        "temperature": 4.0,
        "keep_float": "first_last",
    }
    assert recipe.compare.pipelines is None and recipe.compare.out == "runs/compare"
    assert recipe.compare.latency_repeats == 50 and recipe.compare.calibration_samples == 512
    assert recipe.compare.bench_results == []


def load_recipe_dict(tmp_path: Path, data: dict):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_recipe(path)


def test_config_prints_the_sections_resolved(tmp_path, capsys):
    data = tiny_recipe_dict(
        tmp_path / "run", export={"int8": True}, compare={"pipelines": ["teacher"]}
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["config", str(path), "qat.epochs=3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["export"] == {**ExportSpec().model_dump(), "int8": True}
    assert shown["qat"] == {**QatSpec().model_dump(), "epochs": 3}
    assert shown["compare"]["pipelines"] == ["teacher"]
    assert shown["compare"]["latency_repeats"] == 50


def test_resume_ignores_the_after_training_sections(tmp_path):
    """Export, QAT and compare settings never reach the run, so --resume may change them."""
    run = tmp_path / "run"
    run.mkdir()
    saved = load_recipe_dict(tmp_path, tiny_recipe_dict(run))
    (run / "recipe.yaml").write_text(recipe_to_yaml(saved))
    changed = saved.model_copy(
        update={
            "export": ExportSpec(int8=True),
            "qat": QatSpec(epochs=2),
            "compare": CompareSpec(tiny=True),
        }
    )
    check_resume(run, changed)  # no error
    retrained = saved.model_copy(update={"train": saved.train.model_copy(update={"lr": 0.5})})
    with pytest.raises(DistillError, match="train.lr"):
        check_resume(run, retrained)


# ------------------------------------------------------------------------------------ distill export
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("sections-run")
    sections = {
        "export": {"int8": True, "int8_mode": "dynamic", "checkpoint": "last", "qat": True},
        "qat": {"temperature": 2.0},
    }
    recipe = folder / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(folder / "run", **sections)))
    api.train(recipe)
    return folder / "run"


@pytest.fixture
def _wide_console(monkeypatch):
    from distill.cli import export as export_cli

    monkeypatch.setattr(export_cli.console, "_width", 160)


@pytest.mark.usefixtures("_wide_console")
def test_export_without_flags_follows_the_recipe(run_dir, tmp_path, capsys):
    code = main(["export", str(run_dir), "--out", str(tmp_path / "e")])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        "export.json",
        "qat.json",
        "student.int8.onnx",
        "student.onnx",
        "student.qat.int8.onnx",
    ]
    report = json.loads((tmp_path / "e" / "export.json").read_text())
    assert report["files"]["int8"]["mode"] == "dynamic"  # a CNN's default would be static
    assert report["files"]["int8"]["calibration_samples"] == 0
    assert report["checkpoint"] == "last"
    assert report["settings"]["int8_mode"] == "dynamic" and report["settings"]["int8"] is True
    qat = json.loads((tmp_path / "e" / "qat.json").read_text())
    assert qat["temperature"] == 2.0 and qat["epochs"] == 1


@pytest.mark.usefixtures("_wide_console")
def test_export_flags_override_the_recipe(run_dir, tmp_path, capsys):
    argv = ["--no-int8", "--qat-epochs", "0", "--checkpoint", "best", "--out", str(tmp_path / "e")]
    code = main(["export", str(run_dir), *argv])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["export.json", "student.onnx"]
    report = json.loads((tmp_path / "e" / "export.json").read_text())
    assert report["checkpoint"] == "best" and report["settings"]["int8"] is False


def test_export_run_keywords_override_the_section(run_dir, tmp_path):
    from distill.export import export_run

    result = export_run(run_dir, out=tmp_path / "e", int8_mode="static", calibration_batches=1)
    assert result["files"]["int8"]["mode"] == "static"
    assert result["files"]["int8"]["calibration_samples"] == 64  # one batch of 64
    assert result["checkpoint"] == "last"  # from the recipe
    with pytest.raises(DistillError, match="unknown int8 mode 'statc'"):
        export_run(run_dir, int8_mode="statc")


# ----------------------------------------------------------------------------------- distill compare
@pytest.fixture
def _compare_setup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(commands.console, "_width", 200)


def kd_recipe(tmp_path: Path, **compare: object) -> str:
    data = tiny_recipe_dict(
        tmp_path / "x",
        name="kd",
        teacher={**TEACHER, "weights": "missing"},
        distill={"terms": [{"loss": "kd"}]},
        compare=compare,
    )
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(data))
    return str(tmp_path / "kd.yaml")


@pytest.mark.usefixtures("_compare_setup")
def test_compare_reads_its_section_and_flags_win(tmp_path, capsys):
    recipe = kd_recipe(tmp_path, pipelines=["teacher", "student-kd-int9"])
    assert main(["compare", recipe]) == 2
    err = capsys.readouterr().err
    assert "'student-kd-int9'" in err and "Did you mean" in err  # the section's list is used
    assert main(["compare", recipe, "--pipelines", "teacher"]) == 2  # the flag replaces it
    err = capsys.readouterr().err
    assert "int9" not in err and "teacher weights 'missing'" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


@pytest.mark.integration
@pytest.mark.usefixtures("_compare_setup")
def test_compare_without_flags_follows_the_recipe(tmp_path, capsys):
    teacher = tmp_path / "t.yaml"
    teacher.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path / "x", name="t", student=TEACHER)))
    recipe = kd_recipe(
        tmp_path, pipelines=["teacher"], out="cmp", teacher_recipe=str(teacher), latency_repeats=2
    )
    code = main(["compare", recipe])
    _, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert [r["pipeline"] for r in report["rows"]] == ["teacher"]
    assert report["settings"]["latency_repeats"] == 2 and report["settings"]["out"] == "cmp"
    assert not (tmp_path / "runs" / "compare").exists()


def test_compare_reuses_runs_whatever_the_after_training_sections(tmp_path):
    """A comparison's trained runs (and cached teachers) are reused when only export:, qat: or compare:
    changed: those settings never reach the training."""
    from distill.compare.runs import recipe_key, same_recipe

    recipe = load_recipe("fashion_mnist/teacher", [f"output={tmp_path / 'run'}"])
    other = load_recipe(
        "fashion_mnist/teacher",
        [
            f"output={tmp_path / 'run'}",
            "compare.latency_repeats=5",
            "export.int8=true",
            "qat.epochs=2",
        ],
    )
    (tmp_path / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    assert same_recipe(tmp_path, other) and recipe_key(other) == recipe_key(recipe)
    retrained = load_recipe("fashion_mnist/teacher", ["train.lr=0.5"])
    assert not same_recipe(tmp_path, retrained) and recipe_key(retrained) != recipe_key(recipe)
