"""`distill export --select` on a language-model run: calibration batches come from the LM dataset's
own loader (it crashed with a TypeError on ``shuffle=``); every candidate is made or says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.cli import main
from lm.lm_helpers import corpus

pytest.importorskip("onnxruntime", reason="needs the export extra")

TINY = ["data.options.block_size=16", "data.train_subset=8", "data.test_subset=4",
        "train.batch_size=4", "train.eval_batch_size=4", "train.progress=false", "train.max_steps=1",
        "teacher=null"]  # fmt: skip


def test_select_on_a_gpt_run_makes_or_explains_every_candidate(tmp_path: Path, monkeypatch):
    from distill.export import run as export_module

    run = tmp_path / "run"
    root = corpus(tmp_path / "corpus")
    assert main(["train", "shakespeare/scratch", f"data.root={root}", *TINY, f"output={run}"]) == 0
    result = export_module.export_run(run, select=True, timer=lambda path, runtime: 1.0)
    chosen = result["selection"]["onnxruntime"]
    names = {c["name"] for c in chosen["candidates"]}
    assert {"float32", "float16", "int8-static", "int8-dynamic", "int8-mixed"} <= names
    assert chosen["file"] is not None and all(c["reason"] for c in chosen["candidates"])
