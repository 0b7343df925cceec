"""Every shipped KD method on the Fashion-MNIST teacher/student pair, over several seeds.

For each seed, trains ``fashion_mnist/scratch`` and every ``fashion_mnist/<method>`` recipe whose name is a
registered loss (plus ``kd_ls``, KD with logit standardization), all with the same teacher, epochs, data
and schedule. Two trainings run at a time in 'spawn' processes with one torch thread each. Reports the
**final epoch's** test top-1 (``summary["last"]["top1"]``, not the best epoch), mean ± sample std over
seeds, and the mean paired gain over scratch (method seed s minus scratch seed s).

Examples::

    python benchmarks/methods.py --write docs/benchmarks/methods.md              # recipes as shipped
    python benchmarks/methods.py --epochs 3 --train-subset 20000 --write ...     # a shorter budget
    python benchmarks/methods.py --methods kd dkd at --seeds 0                   # a few methods

Each finished run is appended to ``<out>/results.jsonl`` and skipped when the command is run again with
the same settings (pass ``--fresh`` to start over); ``--table-only`` rebuilds the table from it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

EXTRA_RECIPES = ("kd_ls",)  # recipes that are variants of a registered method


def available_methods() -> list[str]:
    from distill.config.load import BUILTIN_RECIPES
    from distill.losses import LOSSES

    shipped = {p.stem for p in (BUILTIN_RECIPES / "fashion_mnist").glob("*.yaml")}
    return sorted(n for n in shipped if n in LOSSES or n in EXTRA_RECIPES)


def _run(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: one training with one torch thread. Returns the job with ``top1`` and ``seconds`` added."""
    import torch

    torch.set_num_threads(1)
    from distill import api
    from distill.config.load import load_recipe

    overrides = [
        f"train.seed={job['seed']}",
        "train.progress=false",
        f"output={job['output']}",
        *job["common"],
    ]
    if job["method"] != "scratch":
        overrides.append(f"teacher.weights={job['teacher']}")
    recipe = load_recipe(f"fashion_mnist/{job['method']}", overrides)
    start = time.perf_counter()
    try:
        summary = api.train(recipe, overwrite=True)
    except Exception as err:  # noqa: BLE001 - a failed method is reported in the table, not fatal
        return {
            **job,
            "top1": None,
            "error": f"{type(err).__name__}: {err}",
            "seconds": time.perf_counter() - start,
        }
    return {**job, "top1": float(summary["last"]["top1"]), "seconds": time.perf_counter() - start}


def mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def _pm(xs: list[float], signed: bool = False) -> str:
    m, s = mean_std(xs)
    if m != m:
        return "–"
    head = f"{m:+.2f}" if signed else f"{m:.2f}"
    return head + (f" ± {s:.2f}" if s == s else "")


def recipe_fingerprint(method: str, common: list[str]) -> str:
    """A hash of the method's recipe as written (its file and includes, plus ``common``): a stored result is
    reused only while the recipe is unchanged. Schema defaults are left out on purpose, so a new optional
    field elsewhere in the package does not invalidate every stored run."""
    import hashlib

    from distill.config.load import find_recipe, load_raw

    raw = load_raw(find_recipe(f"fashion_mnist/{method}"))
    text = json.dumps([raw, common], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_same_training(methods: list[str], common: list[str]) -> dict[str, Any]:
    """Every method must train with the scratch student's epochs, schedule and data (only the loss differs)."""
    from distill.config.load import load_recipe

    def settings(name: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        r = load_recipe(f"fashion_mnist/{name}", common)
        return r.train.model_dump(), r.data.model_dump(), r.student.model_dump()

    reference = settings("scratch")
    for method in methods:
        if method != "scratch" and settings(method) != reference:
            raise SystemExit(
                f"fashion_mnist/{method} trains differently from fashion_mnist/scratch (train, data or "
                "student settings); the benchmark compares losses only"
            )
    return reference[0]


def teacher_accuracy(teacher: str, common: list[str]) -> float:
    """Test top-1 (%) of the teacher weights on the benchmark's test split."""
    from distill.config.build import build, eval_loader
    from distill.config.load import load_recipe

    built = build(load_recipe("fashion_mnist/kd", [*common, f"teacher.weights={teacher}"]))
    return float(
        built.distiller.task.evaluate(built.teacher, eval_loader(built.test_data, 512))["top1"]
    )


def render(
    results: list[dict[str, Any]], methods: list[str], seeds: list[int], header: dict[str, Any]
) -> str:
    from distill.losses import LOSSES

    by = {(r["method"], r["seed"]): r for r in results}
    acc = {k: r["top1"] for k, r in by.items() if r.get("top1") is not None}
    teacher = header["teacher_acc"]
    scratch_mean = mean_std([acc[("scratch", s)] for s in seeds if ("scratch", s) in acc])[0]
    gap = teacher - scratch_mean
    seed_cols = " | ".join(f"seed {s}" for s in seeds)
    lines = [
        "# KD methods on Fashion-MNIST",
        "",
        f"Command: `{header['command']}`",
        "",
        f"Machine: {header['machine']}; torch {header['torch']}; one torch thread per training, two "
        "trainings in parallel.",
        "",
        f"Teacher: `{header['teacher']}` (CNN, 445k parameters, shared by every run): **{teacher:.2f}%** "
        "test top-1. Student: the 6.5k-parameter CNN of `fashion_mnist/scratch` (68x fewer parameters). "
        f"Budget: {header['budget']}. Every method trains with exactly the scratch student's settings "
        f"({header['schedule']}); only the loss terms differ. Each method uses its shipped recipe "
        "(`src/distill/recipes/fashion_mnist/<method>.yaml`: the paper's loss defaults and weights; where "
        "the paper's CIFAR-scale weight or temperature made the student diverge on this pair, the recipe "
        "says what it uses instead and how that was chosen).",
        "",
        "Accuracy is the **final epoch's** test top-1 (%), not the best epoch. Gain = method seed s minus "
        "scratch seed s, mean ± sample std over seeds. Gap closed = mean gain / (teacher − mean scratch), "
        "the share of the teacher-student gap the method closes (for reference, the papers report about "
        "12% for KD, 55% for DKD and 59% for logit standardization on CIFAR-100 resnet32x4 → resnet8x4). "
        + (
            "With three seeds, differences below about 0.3 points are within seed noise."
            if len(seeds) >= 3
            else f"With {len(seeds)} seed{'s' if len(seeds) > 1 else ''} there is no usable spread: "
            "on this pair seeds differ by about 0.3 points or more (the 3-epoch table), so a "
            "difference that small is not established."
        ),
        "",
        f"| method | kind | {seed_cols} | mean ± std | gain over scratch | gap closed | seeds with gain > 0 | s / run |",
        "|---|---|" + "---|" * len(seeds) + "---|---|---|---|---|",
        "| teacher | – | " + " | ".join("–" for _ in seeds) + f" | {teacher:.2f} | – | – | – | – |",
    ]

    def mean_of(method: str) -> float:
        got = [acc[(method, s)] for s in seeds if (method, s) in acc]
        return statistics.fmean(got) if got else float("-inf")

    ranked = sorted((m for m in methods if m != "scratch"), key=mean_of, reverse=True)
    failures = []
    for method in ["scratch", *ranked]:
        got = [acc.get((method, s)) for s in seeds]
        cells = " | ".join(f"{a:.2f}" if a is not None else "–" for a in got)
        present = [a for a in got if a is not None]
        gain = wins = kind = closed = "–"
        if method != "scratch":
            diffs = [
                acc[(method, s)] - acc[("scratch", s)]
                for s in seeds
                if (method, s) in acc and ("scratch", s) in acc
            ]
            if diffs:
                gain = _pm(diffs, signed=True)
                wins = f"{sum(d > 0 for d in diffs)}/{len(diffs)}"
                if gap == gap and gap > 0:
                    closed = f"{100 * statistics.fmean(diffs) / gap:+.0f}%"
            base = "kd" if method in EXTRA_RECIPES else method
            kind = LOSSES.meta(base).get("kind", "") if base in LOSSES else ""
        secs = [by[(method, s)]["seconds"] for s in seeds if (method, s) in by]
        per_run = f"{statistics.fmean(secs):.0f}" if secs else "–"
        lines.append(
            f"| {method} | {kind} | {cells} | {_pm(present)} | {gain} | {closed} | {wins} | {per_run} |"
        )
        failures += [
            f"{method} seed {s}: {by[(method, s)]['error']}"
            for s in seeds
            if (method, s) in by and by[(method, s)].get("error")
        ]
    missing = [f"{m} seed {s}" for m in ["scratch", *ranked] for s in seeds if (m, s) not in by]
    if missing:
        lines += ["", f"Not run: {', '.join(missing)}."]
    if failures:
        lines += ["", "Failed runs:", *[f"- {f}" for f in failures]]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--methods", nargs="+", default=None, help="default: every shipped method recipe"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--teacher",
        default=None,
        help="teacher weights (.safetensors); default: train or reuse the demo's cached teacher",
    )
    p.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs")
    p.add_argument("--train-subset", type=int, default=None, help="train on this many samples")
    p.add_argument("--out", default="runs/bench/methods")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--write", default=None, help="write the markdown table here")
    p.add_argument("--fresh", action="store_true", help="ignore results of earlier runs in --out")
    p.add_argument(
        "--table-only", action="store_true", help="only rebuild the table from <out>/results.jsonl"
    )
    args = p.parse_args(argv)

    methods = args.methods or available_methods()
    unknown = sorted(set(methods) - set(available_methods()))
    if unknown:
        raise SystemExit(f"no shipped recipe for {unknown}; choose from {available_methods()}")
    teacher = args.teacher
    if teacher is None:
        from rich.console import Console

        from distill.demo import _teacher_run

        teacher = str(_teacher_run([], fresh=False, console=Console()) / "model.safetensors")
    common = [
        "train.eval_every=1000"
    ]  # evaluate after the last epoch only: the table reports that one
    if args.epochs:
        common.append(f"train.epochs={args.epochs}")
    if args.train_subset:
        common.append(f"data.train_subset={args.train_subset}")
    train_cfg = check_same_training(methods, common)
    schedule = (
        f"{train_cfg['epochs']} epochs, batch {train_cfg['batch_size']}, {train_cfg['optimizer']} "
        f"lr {train_cfg['lr']}, {train_cfg['schedule']} schedule with {train_cfg['warmup_epochs']} warm-up epochs"
    )
    budget = (
        f"{args.epochs or 'recipe'} epochs on "
        f"{args.train_subset or 60000} training images, test on all 10,000"
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    settings = {"teacher": teacher, "common": common}
    done: list[dict[str, Any]] = []
    if results_path.exists() and not args.fresh:
        done = [
            r
            for r in map(json.loads, results_path.read_text().splitlines())
            if r.get("settings") == settings
        ]
    elif not args.table_only:
        results_path.write_text("")
    fingerprints = {m: recipe_fingerprint(m, common) for m in ["scratch", *methods]}
    latest = {  # the newest finished run per (method, seed) with the recipe as it is now
        (r["method"], r["seed"]): r
        for r in done
        if r.get("top1") is not None and r.get("recipe") == fingerprints.get(r["method"])
    }
    finished = set(
        latest
    )  # a result whose recipe changed since (a recalibrated weight) is run again

    jobs: list[dict[str, Any]] = []
    for s in args.seeds:  # seed-major: a cut-short study still has whole seeds
        for method in ["scratch", *[m for m in methods if m != "scratch"]]:
            if (method, s) not in finished:
                jobs.append(
                    {
                        "method": method,
                        "seed": s,
                        "teacher": teacher,
                        "common": common,
                        "settings": settings,
                        "recipe": fingerprints[method],
                        "output": str(out / f"{method}-seed{s}"),
                    }
                )
    results = list(latest.values())
    if not args.table_only and jobs:
        ctx = mp.get_context("spawn")
        with ctx.Pool(args.workers, maxtasksperchild=1) as pool:
            for r in pool.imap_unordered(_run, jobs):
                results.append(r)
                with results_path.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                status = (
                    f"top1 {r['top1']:.2f}" if r.get("top1") is not None else f"FAILED {r['error']}"
                )
                print(
                    f"[{len(results)}/{len(jobs) + len(finished)}] {r['method']} seed {r['seed']}: {status} ({r['seconds']:.0f} s)",
                    flush=True,
                )

    import torch

    header = {
        "command": "python "
        + " ".join(
            shlex.quote(a)
            for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
            if a != "--table-only"
        ),
        "machine": f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), {platform.system()}",
        "torch": torch.__version__,
        "teacher": teacher,
        "budget": budget,
        "schedule": schedule,
        "teacher_acc": teacher_accuracy(teacher, common),
    }
    table = render(results, ["scratch", *methods], args.seeds, header)
    print(table)
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(table)


if __name__ == "__main__":
    main()
