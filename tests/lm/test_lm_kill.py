"""SIGKILL (not a clean stop) in the middle of an LM run leaves nothing half-written that a rerun trusts:
a top-k cache killed while its shards are written is finished by the rerun, byte for byte the cache an
uninterrupted fill writes, and a replay run killed at random steps (inside a step or a checkpoint
write) resumes to the uninterrupted run's weights and logged metrics (tests/test_kill_resume.py is the
same for an image run)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.cli import main
from distill.errors import DistillError
from distill.topk.store import CacheSettings, CacheStore, Fingerprints
from lm.lm_helpers import corpus

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

TIMEOUT_S = 180
TINY = ["teacher.weights=null", "data.options.block_size=16", "data.test_subset=4",
        "train.batch_size=4", "train.eval_batch_size=4", "train.progress=false",
        "train.log_every=1", "train.checkpoint_every=1"]  # fmt: skip
TIMINGS = {"time", "samples_per_s", "generate_s", "train_s", "step_s"}


def start(recipe: str, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "distill", "train", recipe, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, out
    return out


def kill_when(proc: subprocess.Popen, ready, rng: random.Random) -> None:
    """SIGKILL ``proc`` a random moment after ``ready()`` holds."""
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        assert proc.poll() is None, f"the run ended first: {proc.stdout.read()}"
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.01))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=TIMEOUT_S)
    proc.stdout.close()


def records(folder: Path) -> int:
    return len(list(folder.glob("shard-*.json"))) if folder.is_dir() else 0


def unhashed(path: Path) -> dict:
    """A cache's JSON file without the shard checksums."""
    data = json.loads(path.read_text())
    for record in [data, *data.get("shards", [])]:
        record.pop("sha256", None)
    return data


def test_a_topk_cache_killed_while_filling_is_finished_by_the_rerun(tmp_path):
    root = corpus(tmp_path / "corpus")
    args = [f"data.root={root}", *TINY, "data.train_subset=40", "train.max_steps=2",
            "distill.topk_cache.shard_samples=1"]  # fmt: skip
    reference = tmp_path / "reference-cache"
    uninterrupted = [
        *args,
        f"distill.topk_cache.dir={reference}",
        f"output={tmp_path / 'reference'}",
    ]
    assert main(["train", "shakespeare/cached", *uninterrupted]) == 0  # in this process: faster
    cache, run = tmp_path / "cache", tmp_path / "run"
    mine = [*args, f"distill.topk_cache.dir={cache}", f"output={run}"]
    rng = random.Random(7)
    for i, target in enumerate((-1, 17)):  # right after the manifest, then inside the fill
        proc = start("shakespeare/cached", [*mine, *(["--overwrite"] if i else [])])
        kill_when(
            proc, lambda t=target: (cache / "manifest.json").is_file() and records(cache) > t, rng
        )
        if (cache / "manifest.json").is_file():
            assert not json.loads((cache / "manifest.json").read_text())["complete"]
    out = finish(start("shakespeare/cached", [*mine, "--overwrite"]))
    assert "filling the top-8 teacher cache" in out
    files = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in cache.iterdir()) == files  # no temporaries left
    for name in files:  # the same content (safetensors orders its metadata anew in each process)
        if name.endswith(".safetensors"):
            a, b = load_file(str(cache / name)), load_file(str(reference / name))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        else:
            assert unhashed(cache / name) == unhashed(reference / name), name
    final, expected = (
        load_file(str(d / "model.safetensors")) for d in (run, tmp_path / "reference")
    )
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_temporaries_of_a_killed_first_write_do_not_make_the_folder_foreign(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / ".manifest.json.k2j4.tmp").write_text('{"format": "distill-')  # killed mid-write
    (folder / ".shard-00000.safetensors.x1.tmp").write_bytes(b"\0" * 10)
    store = CacheStore(folder, CacheSettings(8, "float16", 1.0, 4), Fingerprints("t", "k", "d"))
    assert store.manifest is None  # nothing trusted: an empty cache to fill
    store.claim(8, 11)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]
    (folder / "stray.bin").write_bytes(b"x")  # a file distill did not write still refuses
    (folder / "manifest.json").unlink()
    with pytest.raises(DistillError, match="holds files but no manifest.json"):
        CacheStore(folder, CacheSettings(8, "float16", 1.0, 4), Fingerprints("t", "k", "d"))


def step_on_disk(run: Path) -> int:
    try:
        manifest = json.loads((run / "checkpoints" / "manifest.json").read_text())
        return max(e["step"] for e in manifest["last"])
    except (OSError, ValueError, KeyError):
        return -1


def logged(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def test_a_replay_run_killed_at_random_steps_resumes_exactly(tmp_path):
    root = corpus(tmp_path / "corpus")
    mode = "distill.data_mode={mode: replay, lam: 0.7, prompt_tokens: 8, replay_size: 6}"
    args = [f"data.root={root}", *TINY, "data.train_subset=32", "train.epochs=2", mode,
            "student.options.dropout=0.1"]  # fmt: skip
    reference = tmp_path / "reference"
    assert main(["train", "shakespeare/on_policy", *args, f"output={reference}"]) == 0
    run = tmp_path / "run"
    rng = random.Random(11)
    targets = sorted(rng.sample(range(1, 14), 2))  # of 16 steps
    for i, target in enumerate(targets):
        proc = start(
            "shakespeare/on_policy", [*args, f"output={run}", *(["--resume"] if i else [])]
        )
        kill_when(proc, lambda t=target: step_on_disk(run) >= t, rng)
    out = finish(start("shakespeare/on_policy", [*args, f"output={run}", "--resume"]))
    assert "resumed" in out
    final, expected = (load_file(str(d / "model.safetensors")) for d in (run, reference))
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    assert logged(run) == logged(reference)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
