"""Training jobs for the kd_recipes parts: one recipe + overrides per job, run in 'spawn' processes with one
torch thread each, finished runs reused (a study cut short resumes), results kept in ``results.jsonl``."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path
from typing import Any


def teacher_run(recipe: str = "fashion_mnist/teacher_strong", train: bool = True) -> Path | None:
    """The cached teacher run (trained once, like the demo's teacher; reused after); with ``train=False``
    the finished run or None."""
    from rich.console import Console

    from distill.compare.runs import cache_dir, cached_run, finished, recipe_key
    from distill.config.load import load_recipe

    if not train:
        resolved = load_recipe(recipe)
        run_dir = cache_dir() / f"{resolved.name}-{recipe_key(resolved)}"
        return run_dir if finished(run_dir, resolved) else None
    return cached_run(recipe, [], False, Console(), role="teacher")


def top1(run_dir: Path) -> float:
    return float(json.loads((run_dir / "summary.json").read_text())["last"]["top1"])


def _train(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from distill import api
    from distill.config.load import load_recipe

    out = Path(job["output"])
    overrides = [
        *job["overrides"],
        f"train.seed={job['seed']}",
        "train.progress=false",
        f"output={out}",
    ]
    start = time.perf_counter()
    if not ((out / "model.safetensors").is_file() and (out / "summary.json").is_file()):
        api.train(load_recipe(job["recipe"], overrides), overwrite=True)
    rates = [
        r["samples_per_s"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if r.get("event") == "train" and "samples_per_s" in r
    ]
    return {
        **job,
        "top1": top1(out),
        "seconds": time.perf_counter() - start,
        "samples_per_s": statistics.median(rates) if rates else None,
    }


def run_jobs(jobs: list[dict[str, Any]], out: Path, workers: int) -> list[dict[str, Any]]:
    """Run ``jobs`` (``label``, ``recipe``, ``overrides``, ``seed``), ``workers`` at a time; returns every
    result in ``out/results.jsonl`` for these labels (earlier finished runs included)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    done = {(r["label"], r["seed"]) for r in read(path)}
    todo = []
    for job in jobs:
        job["output"] = str(
            out / f"{job['label'].replace(' ', '_').replace('+', 'p')}-seed{job['seed']}"
        )
        if (job["label"], job["seed"]) not in done:
            todo.append(job)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if todo:
        ctx = mp.get_context("spawn")
        with ctx.Pool(max(1, workers), maxtasksperchild=1) as pool:
            for result in pool.imap_unordered(_train, todo):
                with open(path, "a") as f:
                    f.write(json.dumps(result) + "\n")
                print(f"{result['label']} seed {result['seed']}: {result['top1']:.2f}", flush=True)
    labels = {j["label"] for j in jobs}
    return [r for r in read(path) if r["label"] in labels]


def read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            latest[(r["label"], r["seed"])] = r
    return list(latest.values())


def mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def machine() -> str:
    import platform

    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}"
