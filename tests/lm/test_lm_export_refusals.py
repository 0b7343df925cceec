"""`distill export` options a language-model run cannot take are refused before any file is written."""

from __future__ import annotations

from pathlib import Path

from distill.cli import main
from lm.lm_helpers import corpus

TINY = ["data.options.block_size=16", "data.train_subset=8", "data.test_subset=4",
        "train.batch_size=4", "train.eval_batch_size=4", "train.progress=false", "train.max_steps=2",
        "teacher=null"]  # fmt: skip


def test_qat_epochs_on_a_causal_lm_is_refused_before_the_export_is_written(tmp_path: Path, capsys):
    run = tmp_path / "run"
    root = corpus(tmp_path / "corpus")
    assert main(["train", "shakespeare/scratch", f"data.root={root}", *TINY, f"output={run}"]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--qat-epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--qat-epochs" in err and "--int8" in err
    assert not (run / "export").exists()
