"""`distill export` options a language-model run cannot take are refused before any file is written
(and, for Core ML, before the ONNX export is made and evaluated)."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.cli import main
from distill.export import run as export_run_module
from lm.lm_helpers import corpus

TINY = ["data.options.block_size=16", "data.train_subset=8", "data.test_subset=4",
        "train.batch_size=4", "train.eval_batch_size=4", "train.progress=false", "train.max_steps=2",
        "teacher=null"]  # fmt: skip


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    """A 2-step run of distill's own GPT student (no teacher) on the generated corpus."""
    tmp = tmp_path_factory.mktemp("lm")
    run = tmp / "run"
    root = corpus(tmp / "corpus")
    assert main(["train", "shakespeare/scratch", f"data.root={root}", *TINY, f"output={run}"]) == 0
    return run


def test_qat_epochs_on_a_causal_lm_is_refused_before_the_export_is_written(lm_run: Path, capsys):
    capsys.readouterr()
    assert main(["export", str(lm_run), "--qat-epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--qat-epochs" in err and "--int8" in err
    assert not (lm_run / "export").exists()


def test_coreml_on_a_causal_lm_is_refused_before_the_onnx_export(lm_run: Path, capsys, monkeypatch):
    def no_export(*args, **kwargs):
        raise AssertionError("the ONNX export ran before the Core ML refusal")

    monkeypatch.setattr(export_run_module, "_export_all", no_export)
    capsys.readouterr()
    assert main(["export", str(lm_run), "--format", "coreml"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--format coreml" in err and "--format onnx" in err
    assert not (lm_run / "export").exists()


def test_static_int8_on_a_causal_lm_is_refused_before_the_onnx_export(
    lm_run: Path, capsys, monkeypatch
):
    def no_export(*args, **kwargs):
        raise AssertionError("the ONNX export ran before the static int8 refusal")

    monkeypatch.setattr(export_run_module, "_export_all", no_export)
    capsys.readouterr()
    assert main(["export", str(lm_run), "--int8", "--int8-mode", "static"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--int8-mode static" in err and "dynamic" in err
    assert not (lm_run / "export").exists()
