"""Part ``full``: the patient full-label pair and the gain of each ingredient.

The 6.5k student on all 60k labels, 3 seeds, final epoch's test top-1:

* ``scratch``: labels only, no augmentation (``fashion_mnist/scratch``), ``--epochs``;
* ``scratch+aug``: the same with the patient recipe's augmentation (``fashion_mnist/scratch_aug``);
* ``kd``: KD from the teacher without augmentation (the plain exact cache);
* ``kd+aug``: KD from ``teacher_strong`` on the same augmented views, cached (``fashion_mnist/kd_patient``);
* ``kd+aug+mixup``: the same plus mixup (alpha 0.2), online teacher (a mixed batch cannot be cached);
* ``scratch+aug long`` / ``kd+aug long``: the augmented pair at ``--long-epochs``;
* ``scratch_long`` / ``kd_long``: the shipped patient pair (``fashion_mnist/scratch_long`` and
  ``fashion_mnist/kd_long``, their own schedule, no augmentation): the headline ``full_label`` figure;
  ``kd_long T=2`` is kd_long at the temperature the other recipes use.

Gap closed = (KD - scratch) / (teacher - scratch), against the scratch student with the same schedule and
augmentation, per seed and for the means. The headline pair is the shipped one when it ran, else the
augmented long pair, else the augmented short pair.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Any

from kd_parts._jobs import machine, mean_std, read, run_jobs, teacher_run, top1

PLAIN = [
    "data.augment={}",
    "distill.cache_views=0",
]  # KD without augmentation (the exact plain cache)
MIXUP = ["data.augment.mixup=0.2", "distill.cache_teacher=false", "distill.cache_views=0"]


PAIR_NAMES = {
    "shipped": "kd_long vs scratch_long",
    "long": "kd+aug long vs scratch+aug long",
    "short": "kd+aug vs scratch+aug",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--note", default="", help="a sentence for the report (budget, what was cut)"
    )
    parser.add_argument(
        "--no-run",
        action="store_true",
        help="only summarize the finished runs in OUT/results.jsonl",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--long-epochs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/bench/kd_recipes/full")
    parser.add_argument(
        "--probes",
        default=None,
        help="JSON lines of the validation-split probes behind the shipped pair's settings (label, "
        "what, top1, epochs), listed in the report",
    )
    parser.add_argument("--only", nargs="*", default=None, help="run only these variant labels")
    parser.add_argument(
        "--reuse",
        nargs="*",
        default=[],
        help="variant labels whose per-seed accuracies are taken from the part file already written "
        "(docs/benchmarks/kd_recipes/full.json) instead of training: runs of unchanged recipes whose "
        "run folders are gone; LABEL:EARLIER takes them from the earlier file's row EARLIER",
    )
    parser.add_argument(
        "--teacher",
        default="fashion_mnist/teacher_strong",
        help="the teacher's recipe (trained once, cached)",
    )


def variants(epochs: int, long: int, teacher: Path) -> dict[str, tuple[str, list[str]]]:
    kd = [f"teacher.weights={teacher}"]
    return {
        "scratch": ("fashion_mnist/scratch", [f"train.epochs={epochs}"]),
        "scratch+aug": ("fashion_mnist/scratch_aug", [f"train.epochs={epochs}"]),
        "kd": ("fashion_mnist/kd_patient", [*kd, *PLAIN, f"train.epochs={epochs}"]),
        "kd+aug": ("fashion_mnist/kd_patient", [*kd, f"train.epochs={epochs}"]),
        "kd+aug+mixup": ("fashion_mnist/kd_patient", [*kd, *MIXUP, f"train.epochs={epochs}"]),
        "scratch+aug long": ("fashion_mnist/scratch_aug", [f"train.epochs={long}"]),
        "kd+aug long": ("fashion_mnist/kd_patient", [*kd, f"train.epochs={long}"]),
        "scratch_long": ("fashion_mnist/scratch_long", []),
        "kd_long": ("fashion_mnist/kd_long", kd),
        "kd_long T=2": ("fashion_mnist/kd_long", [*kd, "distill.terms.0.options.temperature=2.0"]),
        "scratch_long lr 0.2": ("fashion_mnist/scratch_long", ["train.lr=0.2"]),
    }


def shipped_epochs() -> int:
    """The shipped pair's schedule (``fashion_mnist/kd_long``; the test keeps scratch_long on it)."""
    from distill.config.load import load_recipe

    return load_recipe("fashion_mnist/kd_long").train.epochs


def prefill(teacher: Path) -> float | None:
    """Fill the shared view cache once before the cached KD runs start in parallel; seconds (None: reused)."""
    from rich.console import Console

    from distill.config.build import build
    from distill.config.load import load_recipe

    built = build(load_recipe("fashion_mnist/kd_patient", [f"teacher.weights={teacher}"]))
    source = built.distiller.source
    start = time.perf_counter()
    source.prepare(built.train_data, built.recipe.train.eval_batch_size, Console(), True)
    return time.perf_counter() - start if source.store.fill_seconds is not None else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    labels = args.only or list(variants(0, 0, Path()))
    teaching = any(x.startswith("kd") for x in labels)
    teacher = teacher_run(args.teacher, train=teaching)
    teacher_acc = top1(teacher) if teacher is not None else float("nan")
    weights = teacher / "model.safetensors" if teacher is not None else Path("none")
    table = variants(args.epochs, args.long_epochs, weights)
    reused = earlier_results(args.reuse, args.seeds)
    skip = {r["label"] for r in reused}
    cached = any(x.startswith("kd+aug") and "mixup" not in x and x not in skip for x in labels)
    fill = prefill(weights) if cached and not args.no_run else None
    jobs = [
        {"label": label, "recipe": table[label][0], "overrides": table[label][1], "seed": s}
        for label in labels
        for s in args.seeds
    ]
    jobs = [j for j in jobs if j["label"] not in skip]
    if args.no_run:
        results = [r for r in read(Path(args.out) / "results.jsonl") if r["label"] in labels]
    else:
        results = run_jobs(jobs, Path(args.out), args.workers)
    results = [r for r in results if r["label"] not in skip] + reused
    result = summarize(results, args, teacher_acc, fill, time.perf_counter() - started)
    if args.probes:
        lines = Path(args.probes).read_text().splitlines()
        result["probes"] = [json.loads(line) for line in lines if line.strip()]
    return result


def earlier_results(labels: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """``labels``' results from the part file already written (per-seed top-1, mean seconds per run);
    ``LABEL:EARLIER`` names the earlier row (a recipe renamed or re-tuned since)."""
    if not labels:
        return []
    path = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "kd_recipes" / "full.json"
    earlier = json.loads(path.read_text())
    pairs = [(x.split(":")[0], x.split(":")[-1]) for x in labels]
    missing = [old for _, old in pairs if old not in earlier["per_seed_top1"]]
    if missing:
        raise SystemExit(f"--reuse: {missing} not in {path}; run them instead")
    return [
        {
            "label": label,
            "seed": s,
            "top1": earlier["per_seed_top1"][old][str(s)],
            "seconds": earlier["seconds_per_run"][old],
            "reused": True,
        }
        for label, old in pairs
        for s in seeds
        if str(s) in earlier["per_seed_top1"][old]
    ]


def gap(kd: dict[int, float], scratch: dict[int, float], teacher: float) -> dict[str, Any]:
    seeds = sorted(set(kd) & set(scratch))
    per_seed = {s: (kd[s] - scratch[s]) / (teacher - scratch[s]) for s in seeds}
    kd_mean, _ = mean_std([kd[s] for s in seeds])
    sc_mean, _ = mean_std([scratch[s] for s in seeds])
    return {
        "gap_closed": (kd_mean - sc_mean) / (teacher - sc_mean) if seeds else None,
        "gap_closed_per_seed": per_seed,
        "seeds_positive": sum(kd[s] > scratch[s] for s in seeds),
        "seeds": seeds,
    }


def summarize(
    results: list[dict[str, Any]],
    args: argparse.Namespace,
    teacher_acc: float,
    fill,
    seconds: float,
) -> dict[str, Any]:
    by: dict[str, dict[int, float]] = {}
    secs: dict[str, list[float]] = {}
    for r in results:
        by.setdefault(r["label"], {})[r["seed"]] = r["top1"]
        secs.setdefault(r["label"], []).append(r["seconds"])
    pairs = {}
    if "kd_long" in by and "scratch_long" in by:
        pairs["shipped"] = gap(by["kd_long"], by["scratch_long"], teacher_acc)
    if "kd+aug long" in by and "scratch+aug long" in by:
        pairs["long"] = gap(by["kd+aug long"], by["scratch+aug long"], teacher_acc)
    if "kd+aug" in by and "scratch+aug" in by:
        pairs["short"] = gap(by["kd+aug"], by["scratch+aug"], teacher_acc)
    if "kd+aug" in by and "scratch" in by:  # against the unaugmented scratch student, for honesty
        pairs["short vs unaugmented scratch"] = gap(by["kd+aug"], by["scratch"], teacher_acc)
    name = next((n for n in ("shipped", "long", "short") if n in pairs), None)
    head = pairs.get(name, {})
    plain = pairs.get("short vs unaugmented scratch", {})

    def diff(a: str, b: str) -> float | None:
        """Mean paired difference over the seeds both variants ran."""
        if a not in by or b not in by:
            return None
        common = sorted(set(by[a]) & set(by[b]))
        return mean_std([by[a][s] - by[b][s] for s in common])[0] if common else None

    ingredients = {
        "augmentation alone (scratch+aug - scratch)": diff("scratch+aug", "scratch"),
        "teacher alone (kd - scratch, no augmentation)": diff("kd", "scratch"),
        "+ teacher (kd+aug - scratch+aug)": diff("kd+aug", "scratch+aug"),
        "+ mixup (kd+aug+mixup - kd+aug)": diff("kd+aug+mixup", "kd+aug"),
        "+ longer (kd+aug long - kd+aug)": diff("kd+aug long", "kd+aug"),
        "longer, no augmentation (scratch_long - scratch)": diff("scratch_long", "scratch"),
        "teacher at the long schedule (kd_long - scratch_long)": diff("kd_long", "scratch_long"),
        "T=1 over T=2 at the long schedule (kd_long - kd_long T=2)": diff("kd_long", "kd_long T=2"),
        "scratch's own best lr at the long schedule (scratch_long - scratch_long lr 0.2)": diff(
            "scratch_long", "scratch_long lr 0.2"
        ),
        "teacher against the lr-0.2 scratch arm (kd_long - scratch_long lr 0.2)": diff(
            "kd_long", "scratch_long lr 0.2"
        ),
    }
    return {
        "summary": {
            "full_label": {
                "gap_closed": head.get("gap_closed"),
                "seeds_positive": head.get("seeds_positive"),
                "seeds": head.get("seeds"),
                "gap_closed_per_seed": head.get("gap_closed_per_seed"),
                "pair": PAIR_NAMES.get(name),
                "teacher_top1": teacher_acc,
                "per_seed_top1": by,
                "gap_closed_vs_unaugmented_scratch": plain.get("gap_closed"),
                "seeds_positive_vs_unaugmented_scratch": plain.get("seeds_positive"),
            }
        },
        "teacher_top1": teacher_acc,
        "teacher": args.teacher,
        "per_seed_top1": by,
        "pairs": pairs,
        "ingredients": ingredients,
        "seconds_per_run": {k: mean_std(v)[0] for k, v in secs.items()},
        "view_fill_seconds": fill,
        "epochs": args.epochs,
        "long_epochs": args.long_epochs,
        "shipped_epochs": shipped_epochs(),
        "seeds": args.seeds,
        "workers": args.workers,
        "wall_seconds": seconds,
        "machine": machine(),
        "note": args.note,
        "command": "OMP_NUM_THREADS=1 python benchmarks/kd_recipes.py --part full "
        f"--epochs {args.epochs} --long-epochs {args.long_epochs} --workers {args.workers} "
        f"--teacher {args.teacher}"
        + (" --only " + shlex.join(args.only) if args.only else "")
        + (" --reuse " + shlex.join(args.reuse) if args.reuse else "")
        + (f" --probes {args.probes}" if args.probes else ""),
    }


def render(result: dict[str, Any]) -> str:
    by = result["per_seed_top1"]
    seeds = result["seeds"]
    lines = [
        "## Patient full-label pair (part `full`)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['machine']}; one torch thread per training, {result['workers']} in parallel; "
        f"wall time {result['wall_seconds'] / 60:.0f} min for the runs this call made.",
        "",
        f"Teacher: `{result['teacher']}` (445k parameters), {result['teacher_top1']:.2f} % test "
        "top-1. Student: the 6.5k-parameter CNN on all 60k labels. Accuracy: the final epoch's test "
        f"top-1 (%), seeds {', '.join(map(str, seeds))}; short = {result['epochs']} epochs, long = "
        f"{result['long_epochs']} epochs; scratch_long and kd_long train "
        f"{result.get('shipped_epochs', '?')} epochs, no augmentation, each at its own best lr of a "
        "validation grid both got (scratch_long 0.4, kd_long 0.2; 'scratch_long lr 0.2' is the "
        "baseline before that grid).",
        "",
        "| variant | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | mean ± std | wall s per run |",
        "|---|" + "---|" * len(seeds) + "---|---|",
    ]
    for label, accs in by.items():
        cells = [
            f"{accs[str(s)] if str(s) in accs else accs.get(s, float('nan')):.2f}" for s in seeds
        ]
        m, sd = mean_std(list(accs.values()))
        secs = result["seconds_per_run"].get(label)
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {m:.2f} ± {sd:.2f} | {secs or 0:.0f} |"
        )
    lines += [
        "",
        "Gain of each ingredient (mean paired difference over the seeds both ran, points):",
        "",
    ]
    for name, value in result["ingredients"].items():
        lines.append(f"* {name}: " + ("not run" if value is None else f"{value:+.2f}"))
    lines.append("")
    for name, pair in result["pairs"].items():
        per = ", ".join(
            f"seed {s}: {100 * g:.0f} %" for s, g in pair["gap_closed_per_seed"].items()
        )
        lines.append(
            f"* {name} pair: gap closed {100 * pair['gap_closed']:.0f} % of the teacher-student gap "
            f"(means), positive on {pair['seeds_positive']}/{len(pair['seeds'])} seeds ({per})."
        )
    if result.get("view_fill_seconds") is not None:
        lines.append(f"* The one-off view-cache fill took {result['view_fill_seconds']:.0f} s.")
    if result.get("probes"):
        lines += [
            "",
            "Probes behind the shipped pair's settings (seed 0, scored on 10,000 training images held "
            "out, `data.validation=10000`, never the test split; 50,000 training images):",
            "",
            "| probe | what | epochs | validation top-1 |",
            "|---|---|---|---|",
        ]
        for row in result["probes"]:
            lines.append(
                f"| {row['label']} | {row['what']} | {row['epochs']} | {row['top1']:.2f} |"
            )
    if result.get("note"):
        lines += ["", f"Note: {result['note']}"]
    return "\n".join(lines) + "\n"
