"""The settings probes behind ``shakespeare/{scratch,kd,cached}``: two-seed runs of the 64 k character
student alone, with the KD term alone and with 0.5 x cross-entropy + 0.5 x KD over the same
learning-rate grid, at the benchmark's steps; the page gives each probe's bpc per seed and the spread
between the seeds, the figure the regime is chosen for.

Every KD probe reads the teacher from one top-32 cache of all the training blocks (filled once with the
teacher of benchmarks/lm.py; ``forward_kl`` on the dense ``@logits`` it rebuilds, the
mass outside the 32 kept characters, under 1 % on average, spread evenly), so a probe costs about what
a scratch run costs and no teacher is loaded. Same steps (1000), seeds (0 and 1: initialisation and
data order), evaluation (the validation plays, last checkpoint) for every probe.

    python benchmarks/lm.py --teacher-only
    OMP_NUM_THREADS=1 python benchmarks/lm_probes.py --write docs/benchmarks/lm_settings.md

Rows go to ``<out>/probes.jsonl`` and are reused by name and seed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

# sqrt(2) steps; at 1000 steps scratch is already worse at 8.5e-3 than at 6e-3
LRS = ("4.2e-3", "6.0e-3", "8.5e-3")


def kd_probe(lr: str, task_weight: float, loss: str, options: str = "") -> list[str]:
    weight = 1.0 - task_weight
    extra = f", options: {{{options}}}" if options else ""
    return [
        f"train.lr={lr}", f"distill.task_weight={task_weight}",
        f"distill.terms=[{{loss: {loss}, weight: {weight}{extra}}}]",
    ]  # fmt: skip


def probes() -> dict[str, tuple[str, list[str]]]:
    """name -> (recipe, overrides): the grid, in the order it was run."""
    grid: dict[str, tuple[str, list[str]]] = {}
    for lr in LRS:
        grid[f"scratch lr={lr}"] = ("scratch", [f"train.lr={lr}"])
    for lr in LRS:
        grid[f"kd alone (task_weight 0) lr={lr}"] = ("kd", kd_probe(lr, 0.0, "forward_kl"))
    for lr in LRS:
        grid[f"kd mixed (0.5 + 0.5) lr={lr}"] = ("kd", kd_probe(lr, 0.5, "forward_kl"))
    return grid


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from distill import api
    from distill.config.load import load_recipe
    from lm import fill_cache, teacher_run, write_page

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default="runs/bench-lm-probes")
    parser.add_argument("--cache", default="runs/bench-lm/cache/offline-k32")
    parser.add_argument("--write", help="the Markdown page to write")
    args = parser.parse_args(argv)
    teacher = teacher_run() / "model.safetensors"
    out = Path(args.out)
    results = out / "probes.jsonl"
    stored = {}
    if results.is_file():
        rows = map(json.loads, results.read_text().splitlines())
        stored = {(r["name"], r["seed"], r["steps"]): r for r in rows}
    rows = []
    for name, (recipe_name, overrides) in probes().items():
        for seed in args.seeds:
            if (name, seed, args.steps) in stored:
                rows.append(stored[name, seed, args.steps])
                continue
            base = [
                "train.progress=false", f"teacher.weights={teacher}", f"train.seed={seed}",
                f"train.max_steps={args.steps}", "train.eval_every=100000",
            ]  # fmt: skip
            if recipe_name == "kd":
                base += [f"distill.topk_cache.dir={args.cache}", "distill.topk_cache.k=32"]
            folder = out / f"{recipe_name}-{len(rows)}-s{seed}"
            recipe = load_recipe(
                f"shakespeare/{recipe_name}", [*base, *overrides, f"output={folder}"]
            )
            if recipe.distill.topk_cache is not None:
                fill_cache(recipe)
            started = time.perf_counter()
            summary = api.train(recipe, overwrite=True)
            row = {"name": name, "seed": seed, "steps": args.steps, "bpc": summary["last"]["bpc"],
                   "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
            print(json.dumps(row), flush=True)
            out.mkdir(parents=True, exist_ok=True)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
    text = table(rows, args.seeds)
    print(text)
    if args.write:  # the hand-written end of an existing page (its "## Reading") is kept
        write_page(Path(args.write), render(text, rows, args))


def table(rows: list[dict], seeds: list[int]) -> str:
    """One line per probe: bpc per seed, their mean and spread (max - min)."""
    by: dict[str, dict[int, float]] = {}
    for r in rows:
        by.setdefault(r["name"], {})[r["seed"]] = r["bpc"]
    head = " | ".join(f"seed {s}" for s in seeds)
    lines = [f"| probe | {head} | mean | spread |", "|---" * (len(seeds) + 3) + "|"]
    for name, bpc in by.items():
        values = [bpc[s] for s in seeds if s in bpc]
        cells = " | ".join(f"{bpc[s]:.4f}" if s in bpc else "-" for s in seeds)
        lines.append(
            f"| {name} | {cells} | {statistics.mean(values):.4f} | {max(values) - min(values):.4f} |"
        )
    return "\n".join(lines)


def best(rows: list[dict], prefix: str) -> tuple[str, float]:
    """The probe starting with ``prefix`` of the lowest mean bpc over seeds, and that mean."""
    by: dict[str, list[float]] = {}
    for r in rows:
        if r["name"].startswith(prefix):
            by.setdefault(r["name"], []).append(r["bpc"])
    name = min(by, key=lambda n: statistics.mean(by[n]))
    return name, statistics.mean(by[name])


def render(table: str, rows: list[dict], args: argparse.Namespace) -> str:
    (scratch, sb), (kd, kb) = best(rows, "scratch"), best(rows, "kd")
    return f"""# Causal LM: the settings probes behind the Shakespeare recipes

Written by `python benchmarks/lm_probes.py --write docs/benchmarks/lm_settings.md`. Seeds {args.seeds}
(initialisation and block order), {args.steps} steps of 32 blocks of 128 characters, the 64 k
`gpt_student`, held-out bits per character on the validation plays (last checkpoint). Machine:
{platform.machine()} CPU, {os.cpu_count()} cores shared with other work, torch {torch.__version__},
`OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}`. KD probes read the teacher from a
top-32 cache (no teacher in memory; see the script's docstring). The same learning-rate grid for every
method: {", ".join(LRS)}; the schedule is the recipes' (warm-up over 2 % of an epoch, cosine to 0 at
the last step).

{table}

Best mean of each: {scratch} ({sb:.4f}) and {kd} ({kb:.4f}).
"""


if __name__ == "__main__":
    main()
