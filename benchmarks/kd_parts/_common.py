"""Helpers shared by the kd_recipes parts of this branch that train runs: the demo's cached teacher, reusable runs,
mean ± std and the machine line."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "benchmarks" / "kd_recipes"


def demo_teacher(console: Any) -> tuple[Path, float]:
    """The demo's teacher run (trained once into the cache, as ``distill demo`` does) and its test top-1."""
    from distill.compare.runs import cached_run

    run = cached_run("fashion_mnist/teacher", [], False, console)
    return run, float(json.loads((run / "summary.json").read_text())["last"]["top1"])


def train_once(recipe: str, overrides: list[str], run_dir: Path, console: Any) -> dict[str, Any]:
    """Train ``recipe`` into ``run_dir``, or reuse the finished run there (same recipe): a cut-short
    benchmark picks up where it stopped."""
    from distill import api
    from distill.compare.runs import finished
    from distill.config.load import load_recipe

    resolved = load_recipe(recipe, [*overrides, f"output={run_dir}", "train.progress=false"])
    if finished(run_dir, resolved) and (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["reused"] = True
        return summary
    return api.train(resolved, overwrite=True, console=console)


def run_seconds(run_dir: Path) -> float:
    """Wall time of a finished run: from its recipe.yaml (written at the start) to its model file (the
    end), so a reused run still reports what it took."""
    return (run_dir / "model.safetensors").stat().st_mtime - (
        run_dir / "recipe.yaml"
    ).stat().st_mtime


def mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def fmt(stat: dict[str, float], scale: float = 1.0, digits: int = 2) -> str:
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f} (n={stat['n']})"


def machine() -> str:
    import torch

    return (
        f"{os.cpu_count()}-core CPU ({platform.machine()}), {platform.system()}, shared with other work; "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s) per process"
    )


def write_part(name: str, result: dict[str, Any]) -> Path:
    """``docs/benchmarks/kd_recipes/<name>.json`` (the dispatcher merges the parts)."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
