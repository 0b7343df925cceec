"""``distill export RUN_DIR``: a tiny trained run exported to ONNX and int8, evaluated like the PyTorch
student; re-exports replace the folder only when complete; bad input exits 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill import api
from distill.cli import export as export_cli
from distill.cli import main
from distill.errors import DistillError
from distill.export import export_run
from helpers import tiny_recipe_dict

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export-run")
    recipe = folder / "tiny.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(folder / "run")))
    api.train(recipe)
    return folder / "run"


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setattr(export_cli.console, "_width", 160)


def test_export_int8_cli(run_dir, capsys):
    code = main(["export", str(run_dir), "--int8", "--checkpoint", "last"])
    out, err = capsys.readouterr()
    assert code == 0, err
    folder = run_dir / "export"
    assert sorted(p.name for p in folder.iterdir()) == [
        "export.json",
        "student.int8.onnx",
        "student.onnx",
    ]
    report = json.loads((folder / "export.json").read_text())
    fp32, int8 = report["files"]["fp32"], report["files"]["int8"]
    assert fp32["parity"]["ok"] and fp32["parity"]["n"] == 128  # the tiny recipe's test subset
    # the ONNX file is evaluated by the same task evaluation: same accuracy as the PyTorch student
    reference = api.evaluate(run_dir, "last")
    assert fp32["metrics"]["top1"] == pytest.approx(reference["top1"], abs=1e-3)
    assert fp32["metrics"]["agreement"] == 100.0
    assert int8["metrics"]["top1"] >= reference["top1"] - 5.0  # 128 test images: 1 image = 0.8 pt
    assert int8["calibration_samples"] == 256  # 8 batches of 64 from the 256-sample training subset
    assert len(int8["float_layers"]) == 2  # first conv and classifier stay float by default
    assert int8["size_bytes"] == (folder / "student.int8.onnx").stat().st_size
    assert "student.int8.onnx" in out and "written to" in out


def test_re_export_replaces_only_when_complete(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    first = export_run(run_dir, out=out, checkpoint="last")
    assert set(first["files"]) == {"fp32"}
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    import distill.export.exporter as exporter

    def broken(*args, **kwargs):
        raise DistillError("export failed halfway")

    monkeypatch.setattr(exporter, "export_onnx", broken)
    with pytest.raises(DistillError, match="halfway"):
        export_run(run_dir, out=out, checkpoint="last")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # earlier export untouched
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # no staging folder left behind
    monkeypatch.undo()
    again = export_run(run_dir, out=out, checkpoint="last")
    assert again["files"]["fp32"]["metrics"] == first["files"]["fp32"]["metrics"]


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--format", "tflite"], ["unknown export format 'tflite'", "Supported: onnx"]),
        (["--format", "onx"], ["Did you mean 'onnx'"]),
        (["--checkpoint", "bset"], ["unknown checkpoint 'bset'", "Did you mean 'best'"]),
    ],
)
def test_bad_options_exit_2_with_one_line(run_dir, capsys, argv, needles):
    code = main(["export", str(run_dir), *argv])
    _, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


def test_not_a_run_dir(tmp_path, capsys):
    code = main(["export", str(tmp_path)])
    _, err = capsys.readouterr()
    assert code == 2 and "not a distill run directory" in err
    assert list(tmp_path.iterdir()) == []


def test_load_student_has_the_checkpoint_weights(run_dir):
    import torch

    from distill.export.run import load_student
    from distill.train.checkpoint import load_checkpoint, model_tensors

    student = load_student(run_dir, "last")
    tensors, _ = load_checkpoint(run_dir / "checkpoints", "last")
    expected = model_tensors(tensors, "model.student.")
    state = student.state_dict()
    assert not student.training and set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in state)
