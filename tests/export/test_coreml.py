"""Core ML: the converter writes an ML program from a tiny zoo CNN, its spec is checked on this machine
without running it (Core ML runs only on macOS), and ``distill export --format coreml`` writes and reports
it; bad input ends in one line, exit 2."""

from __future__ import annotations

import json
import platform
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from distill import api
from distill.cli import export as export_cli
from distill.cli import main
from distill.errors import DistillError
from distill.export import coreml
from distill.models import build_model
from helpers import tiny_recipe_dict

ct = pytest.importorskip("coremltools")
ON_MAC = platform.system() == "Darwin"


def zoo_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("cnn", num_classes=10, in_channels=1, channels=[4, 8]).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("coreml")
    model, x = zoo_cnn(), torch.randn(4, 1, 12, 12)
    return {
        "fp32": coreml.export_coreml(model, x, folder / "m.mlpackage"),
        "fp16": coreml.export_coreml(
            model, x, folder / "m16.mlpackage", precision="float16", batch=4
        ),
    }


def test_converter_writes_a_program_whose_spec_is_as_expected(files):
    check = coreml.validate_coreml(files["fp32"], (1, 12, 12))
    assert check["model_type"] == "mlProgram" and check["spec_version"] >= 7
    assert check["input"] == {"name": "input", "shape": [[1, 256], 1, 12, 12], "dtype": "FLOAT32"}
    assert check["output"] == "output" and check["precision"] == "float32"
    fixed = coreml.validate_coreml(files["fp16"], (1, 12, 12), batch=4)
    assert fixed["input"]["shape"] == [4, 1, 12, 12] and fixed["precision"] == "float16"
    if not ON_MAC:
        assert check["runs_here"] is False and "only on macOS" in check["not_run_because"]


def test_a_file_that_is_not_what_was_asked_is_refused_in_one_line(files, tmp_path):
    with pytest.raises(DistillError, match=r"input shape \[\[1, 256\], 1, 12, 12\], expected") as e:
        coreml.validate_coreml(files["fp32"], (3, 12, 12))
    assert "\n" not in str(e.value)
    with pytest.raises(DistillError, match=r"expected \[4, 1, 12, 12\]"):
        coreml.validate_coreml(files["fp32"], (1, 12, 12), batch=4)
    broken = tmp_path / "broken.mlpackage"
    shutil.copytree(files["fp32"], broken)
    for f in broken.rglob("*.mlmodel"):
        f.write_bytes(b"not a spec")
    with pytest.raises(DistillError, match="not a Core ML file coremltools can read"):
        coreml.validate_coreml(broken, (1, 12, 12))
    relabelled = ct.models.MLModel(str(files["fp32"]), skip_model_load=True)
    relabelled.user_defined_metadata[coreml.PRECISION_KEY] = "float16"
    relabelled.save(str(tmp_path / "relabelled.mlpackage"))
    with pytest.raises(DistillError, match="declared float16 but the program has no float16"):
        coreml.validate_coreml(tmp_path / "relabelled.mlpackage", (1, 12, 12))
    with pytest.raises(DistillError, match="unknown Core ML precision 'int4'"):
        coreml.export_coreml(zoo_cnn(), torch.randn(1, 1, 12, 12), tmp_path / "x.mlpackage", "int4")
    with pytest.raises(DistillError, match="one tensor input"):
        coreml.export_coreml(zoo_cnn(), {"input_ids": torch.zeros(1, 4)}, tmp_path / "y.mlpackage")


@pytest.mark.skipif(ON_MAC, reason="on macOS Core ML runs the file (test below)")
def test_running_it_off_macos_says_why_in_one_line(files):
    with pytest.raises(DistillError, match="Core ML runs models only on macOS") as e:
        coreml.CoreMLModule(files["fp32"])
    assert "\n" not in str(e.value) and "validate_coreml" in str(e.value)


@pytest.mark.skipif(
    not ON_MAC, reason="Core ML runs models only on macOS; validated, not run, here"
)
def test_on_macos_the_file_matches_pytorch_and_is_timed(files):
    from distill.export import measure_latency
    from distill.export.runtime import check_parity
    from distill.export.runtimes import TOLERANCES

    model, x = zoo_cnn(), torch.randn(4, 1, 12, 12)
    module = coreml.CoreMLModule(files["fp32"])
    report = check_parity(model, files["fp32"], x, *TOLERANCES["float32"], runner=module)
    assert report.ok, report
    found = measure_latency(module, x[0], batch_sizes=(1, 4), threads=(None,), repeats=2)
    assert all(v > 0 for v in found.values())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("coreml-run")
    recipe = folder / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(folder / "run")))
    api.train(recipe)
    return folder / "run"


def test_export_format_coreml_writes_and_reports_the_checked_file(run_dir, capsys, monkeypatch):
    monkeypatch.setattr(export_cli.console, "_width", 160)
    code = main(["export", str(run_dir), "--format", "coreml"])
    out, err = capsys.readouterr()
    assert code == 0, err
    folder = run_dir / "export"
    assert (folder / "student.mlpackage").is_dir() and (folder / "student.onnx").is_file()
    report = json.loads((folder / "export.json").read_text())
    entry = report["files"]["coreml"]
    assert entry["path"] == "student.mlpackage" and report["format"] == "coreml"
    assert entry["validation"]["input"]["shape"][0] == [1, 256]
    assert entry["size_bytes"] > 0 and "student.mlpackage" in out
    if not ON_MAC:
        assert "spec checked, not run" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--format", "coremll"], "Did you mean 'coreml'"),
        (["--format", "coreml"], "pip install 'distill[coreml]'"),
    ],
)
def test_bad_coreml_input_exits_2_with_one_line(run_dir, capsys, monkeypatch, argv, needle):
    monkeypatch.setitem(sys.modules, "coremltools", None)  # as if not installed
    before = sorted(p.name for p in run_dir.iterdir())
    code = main(["export", str(run_dir), *argv])
    _, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing saved is lost
