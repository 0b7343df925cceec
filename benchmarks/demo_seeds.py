"""Seed study of the Fashion-MNIST demo: scratch student vs Hinton-KD variants over several seeds.

For each seed, trains ``fashion_mnist/scratch`` once and ``fashion_mnist/kd`` once per KD variant
(same epochs and schedule), two trainings at a time in 'spawn' processes with one torch thread each.
Reports the final epoch's test top-1 (``summary["last"]["top1"]``, not the best epoch), its mean and
sample std over seeds, and the mean paired gain over scratch (KD seed s minus scratch seed s).

Example::

    python benchmarks/demo_seeds.py \\
        --teacher /tmp/dcache_full/fashion_mnist-teacher-9c4be510946a/checkpoints/last.safetensors \\
        --variants "T=2,w=1,task=1" "T=2,w=2,task=1" "T=4,w=1,task=1" \\
        --write docs/benchmarks/demo_seeds.md

Each finished run is appended to ``<out>/results.jsonl``; ``--table-only`` rebuilds the table from it
(useful when a long study is cut short).
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


def parse_variant(text: str) -> dict[str, float]:
    """``"T=2,w=1,task=1"`` -> ``{"T": 2.0, "w": 1.0, "task": 1.0}`` (missing keys take the recipe's values)."""
    values = {"T": 2.0, "w": 1.0, "task": 1.0}
    for part in text.split(","):
        key, _, value = part.strip().partition("=")
        if key not in values or not value:
            raise SystemExit(
                f"bad variant {text!r}: expected keys T, w, task as in 'T=2,w=1,task=1'"
            )
        values[key] = float(value)
    return values


def _fmt(x: float) -> str:
    return f"{x:g}"


def variant_label(v: dict[str, float]) -> str:
    return f"T={_fmt(v['T'])},w={_fmt(v['w'])},task={_fmt(v['task'])}"


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
    ]
    if job["kind"] == "kd":
        v = job["variant"]
        overrides += [
            f"teacher.weights={job['teacher']}",
            f"distill.terms.0.options.temperature={v['T']}",
            f"distill.terms.0.weight={v['w']}",
            f"distill.task_weight={v['task']}",
        ]
    recipe = load_recipe(f"fashion_mnist/{job['kind']}", overrides)
    start = time.perf_counter()
    summary = api.train(recipe, overwrite=True)
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
    return head + (f" ± {s:.2f}" if s == s else "") + (f" (n={len(xs)})" if len(xs) else "")


def render(
    results: list[dict[str, Any]], seeds: list[int], labels: list[str], header: dict[str, str]
) -> str:
    def pct(x: float) -> float:
        return 100.0 * x if x <= 1.0 else x  # top-1 may be a fraction or a percentage

    by = {(r["label"], r["seed"]): pct(r["top1"]) for r in results}
    rows = ["scratch"] + labels
    lines = [
        "# Fashion-MNIST demo: KD vs scratch over seeds",
        "",
        f"Command: `{header['command']}`",
        "",
        f"Machine: {header['machine']}; torch {header['torch']}; one torch thread per training, two trainings in parallel.",
        "",
        f"Teacher: `{header['teacher']}` ({header['teacher_acc']} test top-1), shared by every KD run.",
        "",
        "Accuracy is the **final epoch's** test top-1 (%) (`summary['last']['top1']`), not the best epoch. "
        "Student: 6.5k-parameter CNN, 6 epochs, SGD lr 0.2 cosine with 0.6 warm-up epochs, batch 256, no augmentation; "
        "every variant uses the same schedule and cost. Variant keys: T = KD temperature, w = KD term weight, "
        "task = cross-entropy weight. Gain = KD seed s minus scratch seed s, mean ± sample std over seeds.",
        "",
        "| variant | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | mean ± std | gain over scratch | seeds with gain > 0 |",
        "|---|" + "---|" * len(seeds) + "---|---|---|",
    ]
    for label in rows:
        accs = [by.get((label, s)) for s in seeds]
        cells = [f"{a:.2f}" if a is not None else "–" for a in accs]
        got = [a for a in accs if a is not None]
        if label == "scratch":
            gain, wins = "–", "–"
        else:
            diffs = [
                by[(label, s)] - by[("scratch", s)]
                for s in seeds
                if (label, s) in by and ("scratch", s) in by
            ]
            gain = _pm(diffs, signed=True)
            wins = f"{sum(d > 0 for d in diffs)}/{len(diffs)}" if diffs else "–"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_pm(got)} | {gain} | {wins} |")
    missing = [(label, s) for label in rows for s in seeds if (label, s) not in by]
    if missing:
        lines += [
            "",
            f"Not run (time budget): {', '.join(f'{name} seed {s}' for name, s in missing)}.",
        ]
    secs = [r["seconds"] for r in results]
    if secs:
        sc = [r["seconds"] for r in results if r["kind"] == "scratch"]
        kd = [r["seconds"] for r in results if r["kind"] == "kd"]
        lines += [
            "",
            f"Wall time per training (1 thread, 2 in parallel): scratch {statistics.fmean(sc):.0f} s"
            if sc
            else "",
        ]
        if kd:
            lines[-1] += f", KD {statistics.fmean(kd):.0f} s"
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=["T=2,w=1,task=1"])
    p.add_argument("--teacher", required=True, help="teacher checkpoint (.safetensors)")
    p.add_argument(
        "--teacher-acc", default="91.62%", help="teacher's test top-1, for the report header"
    )
    p.add_argument(
        "--out",
        default="runs/bench/demo_seeds",
        help="folder for the run directories and results.jsonl",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--write", default=None, help="write the markdown table here")
    p.add_argument(
        "--table-only", action="store_true", help="only rebuild the table from <out>/results.jsonl"
    )
    args = p.parse_args(argv)

    variants = [parse_variant(v) for v in args.variants]
    labels = [variant_label(v) for v in variants]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"

    # Job order: scratch and the first variant for every seed first, so a cut-short study still answers (a).
    jobs: list[dict[str, Any]] = []
    for s in args.seeds:
        jobs.append({"kind": "scratch", "label": "scratch", "seed": s})
        jobs.append({"kind": "kd", "label": labels[0], "variant": variants[0], "seed": s})
    for v, label in zip(variants[1:], labels[1:], strict=True):
        for s in args.seeds:
            jobs.append({"kind": "kd", "label": label, "variant": v, "seed": s})
    for i, job in enumerate(jobs):
        slug = job["label"].replace(",", "_").replace("=", "")
        job.update(teacher=args.teacher, output=str(out / f"{slug}-seed{job['seed']}"), index=i)

    results: list[dict[str, Any]] = []
    if args.table_only:
        if results_path.exists():
            results = [
                json.loads(line) for line in results_path.read_text().splitlines() if line.strip()
            ]
    else:
        results_path.write_text("")
        ctx = mp.get_context("spawn")
        with ctx.Pool(args.workers, maxtasksperchild=1) as pool:
            for r in pool.imap_unordered(_run, jobs):
                r.pop("variant", None)
                results.append(r)
                with results_path.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(
                    f"[{len(results)}/{len(jobs)}] {r['label']} seed {r['seed']}: top1 {r['top1']:.4f} ({r['seconds']:.0f} s)",
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
        "teacher": args.teacher,
        "teacher_acc": args.teacher_acc,
    }
    table = render(results, args.seeds, labels, header)
    print(table)
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(table)


if __name__ == "__main__":
    main()
