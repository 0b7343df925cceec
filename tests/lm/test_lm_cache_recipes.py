"""`distill train shakespeare/cached` and `/on_policy` end to end on a generated corpus: the first cached
run fills the cache with the teacher, the second trains without building the teacher; a cache made for
another teacher, a damaged shard and other data are one-line errors that leave the cache as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import distill.config.models as models_module
from distill.cli import main
from lm.lm_helpers import corpus

TINY = ["data.options.block_size=16", "data.train_subset=8", "data.test_subset=4",
        "train.batch_size=4", "train.eval_batch_size=4", "train.progress=false", "train.log_every=1"]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("lmcache")
    root = corpus(tmp / "corpus")
    run = tmp / "teacher"
    assert main(["train", "shakespeare/teacher", f"data.root={root}", *TINY, f"output={run}"]) == 0
    return root, run


def test_cached_recipe_fills_once_then_trains_without_the_teacher(
    teacher, tmp_path, capsys, monkeypatch
):
    root, weights = teacher
    cache = tmp_path / "cache"
    args = [f"data.root={root}", *TINY, f"teacher.weights={weights}",
            f"distill.topk_cache.dir={cache}"]  # fmt: skip
    assert main(["train", "shakespeare/cached", *args, f"output={tmp_path / 'a'}"]) == 0
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["complete"] and manifest["settings"]["k"] == 8
    assert manifest["num_samples"] == 8 and manifest["alignment"] == "row j predicts token j+1"
    filled = snapshot(cache)

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was built although the cache is complete")

    monkeypatch.setattr(models_module, "build_teacher", no_teacher)
    assert main(["train", "shakespeare/cached", *args, f"output={tmp_path / 'b'}"]) == 0
    monkeypatch.undo()
    assert snapshot(cache) == filled
    logs = [
        [json.loads(line)["topk_kl"] for line in (tmp_path / run / "metrics.jsonl").open()
         if "topk_kl" in line]
        for run in ("a", "b")
    ]  # fmt: skip
    assert logs[0] == logs[1] and len(logs[0]) == 2  # the same steps with and without the teacher

    # another teacher (random weights): refused, nothing written, the cache kept
    other = [*args[:-2], "teacher.weights=null", f"distill.topk_cache.dir={cache}"]
    code = main(["train", "shakespeare/cached", *other, f"output={tmp_path / 'c'}"])
    line = error_line(capsys)
    assert code == 2 and "filled for another teacher" in line and str(cache) in line
    assert not (tmp_path / "c").exists() and snapshot(cache) == filled

    # other data (another subset): refused
    code = main(
        ["train", "shakespeare/cached", *args, "data.train_subset=6", f"output={tmp_path / 'd'}"]
    )
    assert code == 2 and "filled for another dataset" in error_line(capsys)

    # a truncated shard: refused, left as it is
    shard = next(cache.glob("shard-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-8])
    damaged = snapshot(cache)
    code = main(["train", "shakespeare/cached", *args, f"output={tmp_path / 'e'}"])
    assert code == 2 and "fails verification" in error_line(capsys)
    assert snapshot(cache) == damaged and not (tmp_path / "e").exists()


def test_a_k_beyond_the_vocabulary_is_one_line_naming_k(teacher, tmp_path, capsys):
    root, weights = teacher
    cache = tmp_path / "cache"
    args = [f"data.root={root}", *TINY, f"teacher.weights={weights}",
            f"distill.topk_cache.dir={cache}", "distill.topk_cache.k=100000"]  # fmt: skip
    code = main(["train", "shakespeare/cached", *args, f"output={tmp_path / 'a'}"])
    line = error_line(capsys)
    assert code == 2 and "distill.topk_cache.k=100000" in line and "use k <=" in line, line
    assert not (tmp_path / "a").exists()


def test_on_policy_recipe_logs_its_modes_and_generation_time(teacher, tmp_path):
    root, weights = teacher
    args = [f"data.root={root}", *TINY, f"teacher.weights={weights}",
            "distill.data_mode.prompt_tokens=8", f"output={tmp_path / 'run'}"]  # fmt: skip
    assert main(["train", "shakespeare/on_policy", *args]) == 0
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").open() if '"loss"' in x]
    assert len(steps) == 2
    for record in steps:
        assert record["mode_student"] == 1.0 and record["mode_dataset"] == 0.0
        assert record["step_s"] > record["generate_s"] > 0 and record["reverse_kl"] > 0
