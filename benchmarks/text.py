"""Text distillation on Rotten Tomatoes: fine-tuned all-MiniLM-L6-v2 teacher -> 2-layer student cut from it.

Fine-tunes the teacher once (``rotten_tomatoes/teacher``; cached under ``$DISTILL_CACHE`` like the demo's
teacher), then for each seed trains the same 2-layer student (embeddings, teacher layers 0 and 3, head)
without KD for 3 and 6 epochs (``rotten_tomatoes/scratch``, ``scratch_long``) and with KD for 6 epochs
(``rotten_tomatoes/kd_long``; ``--methods scratch kd`` for the 3-epoch KD recipe); each KD method is
paired by seed with the no-KD run of the same length. Reports the **final epoch's** test top-1 and
macro-F1 (mean ± sample std over seeds), the student's share of the teacher's accuracy, and CPU latency
(median ms per forward pass, batch 1 and 64, every sequence 64 tokens long).

    python benchmarks/text.py --write docs/benchmarks/text.md
    python benchmarks/text.py --seeds 0 --epochs 1 --train-subset 2000      # a quick look
    # on 2 cores: the teacher once, then one-thread processes side by side, then the table
    python benchmarks/text.py --teacher-only
    OMP_NUM_THREADS=1 python benchmarks/text.py --methods scratch scratch_long &
    OMP_NUM_THREADS=1 python benchmarks/text.py --methods kd_long &
    wait; python benchmarks/text.py --table-only --write docs/benchmarks/text.md

Finished runs go to ``<out>/results.jsonl`` and are skipped when the command is run again with the same
settings; ``--table-only`` rebuilds the table from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch


def _overrides(args: argparse.Namespace) -> list[str]:
    common = ["train.progress=false", f"data.options.max_length={args.max_length}"]
    if args.epochs:
        common.append(f"train.epochs={args.epochs}")
    if args.train_subset:
        common.append(f"data.train_subset={args.train_subset}")
    if args.test_subset:
        common.append(f"data.test_subset={args.test_subset}")
    return common


def teacher_run(args: argparse.Namespace) -> Path:
    """Fine-tune the teacher once per distinct recipe (cached as ``distill compare`` caches teachers)."""
    from distill import api
    from distill.compare.runs import cache_dir, finished, recipe_key
    from distill.config.load import load_recipe

    overrides = _overrides(args)
    if args.teacher_epochs:
        overrides.append(f"train.epochs={args.teacher_epochs}")
    recipe = load_recipe("rotten_tomatoes/teacher", overrides)
    run_dir = cache_dir() / f"rotten_tomatoes-teacher-{recipe_key(recipe)}"
    if finished(run_dir, recipe) and (run_dir / "summary.json").is_file():
        print(f"teacher: reusing {run_dir}", flush=True)
        return run_dir
    started = time.perf_counter()
    api.train(
        load_recipe("rotten_tomatoes/teacher", [*overrides, f"output={run_dir}"]), overwrite=True
    )
    print(f"teacher: {time.perf_counter() - started:.0f} s", flush=True)
    return run_dir


LABELS = {
    "scratch": "2-layer student, no KD",
    "kd": "2-layer student, KD",
    "kd_hidden": "2-layer student, KD + hidden cosine",
    "kd_long": "2-layer student, KD, 6 epochs",
    "scratch_long": "2-layer student, no KD, 6 epochs",
}
BASELINES = {"kd_long": "scratch_long"}  # the no-KD run with the same budget (default: scratch)


def _row_recipe_key(row: dict[str, Any], out: Path) -> str | None:
    """The key of the recipe a stored row was trained with (rows before keys: read from its run folder)."""
    from distill.compare.runs import recipe_key
    from distill.config.load import load_recipe
    from distill.errors import DistillError

    if "recipe" in row:
        return row["recipe"]
    saved = out / f"{row['method']}-s{row['seed']}" / "recipe.yaml"
    try:
        return recipe_key(load_recipe(str(saved))) if saved.is_file() else None
    except DistillError:
        return None


def student_runs(
    args: argparse.Namespace, teacher: Path, results: Path, train: bool = True
) -> list[dict[str, Any]]:
    """Train each (method, seed) whose recipe, as resolved now, has no stored row (only report it when
    ``train`` is off); return the rows of the recipes as they are now."""
    from distill import api
    from distill.compare.runs import recipe_key
    from distill.config.load import load_recipe

    out = Path(args.out)
    stored = (
        [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    )
    for row in stored:  # read each older row's run folder once, not once per (method, seed)
        row["recipe"] = _row_recipe_key(row, out)
    overrides = _overrides(args)
    if args.student_subset:
        overrides.append(f"data.train_subset={args.student_subset}")
    if args.student_lr:
        overrides.append(f"train.lr={args.student_lr}")
    settings = {"overrides": overrides, "teacher": str(teacher)}
    rows = []
    for seed in args.seeds:
        for method in args.methods:
            output = out / f"{method}-s{seed}"
            recipe = load_recipe(
                f"rotten_tomatoes/{method}",
                [*settings["overrides"], f"train.seed={seed}", f"output={output}",
                 f"teacher.weights={teacher / 'model.safetensors'}"],
            )  # fmt: skip
            key = recipe_key(recipe)
            match = [
                r for r in stored
                if (r["method"], r["seed"], r["settings"]) == (method, seed, settings)
                and r["recipe"] == key
            ]  # fmt: skip
            if match:
                rows.append(match[-1])
                continue
            if not train:
                print(f"{method} seed {seed}: no stored run of the current recipe", flush=True)
                continue
            started = time.perf_counter()
            summary = api.train(recipe, overwrite=True)
            row = {
                "method": method, "seed": seed, "top1": summary["last"]["top1"],
                "macro_f1": summary["last"]["macro_f1"], "agreement": summary["last"].get("agreement"),
                "epochs": recipe.train.epochs, "seconds": round(time.perf_counter() - started, 1),
                "settings": settings, "recipe": key,
            }  # fmt: skip
            print(json.dumps(row), flush=True)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            stored.append(row)
            rows.append(row)
    return rows


def latencies(teacher: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median ms per forward pass of the teacher and the 2-layer student, token ids (B, max_length)."""
    from distill.config.build import build
    from distill.config.load import load_recipe
    from distill.models import count_parameters
    from distill.report.measure import latency_ms

    recipe = load_recipe(
        "rotten_tomatoes/scratch",
        [*_overrides(args), f"teacher.weights={teacher / 'model.safetensors'}"],
    )
    built = build(recipe)
    ids = torch.randint(1000, 20000, (args.max_length,))
    out = {}
    for name, model in (("teacher", built.teacher), ("student", built.student)):
        out[name] = {
            "params": count_parameters(model),
            "b1": latency_ms(model, ids, 1, repeats=args.repeats),
            "b64": latency_ms(model, ids, 64, repeats=max(5, args.repeats // 3)),
        }
    return out


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(rows: list[dict[str, Any]], teacher: Path, lat: dict[str, dict[str, float]], args) -> str:
    teacher_last = json.loads((teacher / "summary.json").read_text())["last"]
    by = {m: [r for r in rows if r["method"] == m] for m in args.methods}
    t_top1 = teacher_last["top1"]
    lines = [
        "| model | params | test top-1 (%) | macro-F1 (%) | share of teacher top-1 | latency b1 (ms) | latency b64 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| teacher: all-MiniLM-L6-v2 fine-tuned | {lat['teacher']['params'] / 1e6:.1f}M | {t_top1:.2f} | "
        f"{teacher_last['macro_f1']:.2f} | 100% | {lat['teacher']['b1']:.1f} | {lat['teacher']['b64']:.0f} |",
    ]
    for method in args.methods:
        top1 = [r["top1"] for r in by[method]]
        if not top1:
            continue
        f1 = [r["macro_f1"] for r in by[method]]
        label = f"{LABELS.get(method, '2-layer student')} (`rotten_tomatoes/{method}`)"
        lines.append(
            f"| {label} | {lat['student']['params'] / 1e6:.1f}M | {_mean_std(top1)} | {_mean_std(f1)} | "
            f"{100 * statistics.mean(top1) / t_top1:.1f}% | {lat['student']['b1']:.1f} | {lat['student']['b64']:.0f} |"
        )
    speed = [lat["teacher"][k] / lat["student"][k] for k in ("b1", "b64")]
    lines.append("")
    lines.append(
        f"- Student speed-up over the teacher: {speed[0]:.2f}x at batch 1, {speed[1]:.2f}x at batch 64."
    )
    for method in args.methods:
        per_seed = " / ".join(
            f"{r['top1']:.2f}" for r in sorted(by[method], key=lambda r: r["seed"])
        )
        if per_seed:
            lines.append(f"- Per seed, `{method}` (top-1 %): {per_seed}.")
    for method in args.methods:
        base = BASELINES.get(method, "scratch")
        if method.startswith("scratch") or not by[method] or not by.get(base):
            continue
        pairs = [(k, s) for k in by[method] for s in by[base] if k["seed"] == s["seed"]]
        if not pairs:
            continue
        gains = [k["top1"] - s["top1"] for k, s in pairs]
        lines.append(
            f"- `{method}` minus `{base}` (same epochs), paired by seed: {_mean_std(gains)} points "
            f"(seeds {sorted(k['seed'] for k, _ in pairs)})."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["scratch", "scratch_long", "kd_long"],
        help="student recipes rotten_tomatoes/<method>; scratch and scratch_long are the no-KD baselines "
        "(kd_long is paired with scratch_long, other methods with scratch)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="student epochs (default: the recipe's)"
    )
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument(
        "--student-subset",
        type=int,
        default=None,
        help="students' training samples (default: the teacher's)",
    )
    parser.add_argument("--student-lr", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument(
        "--repeats", type=int, default=100, help="timed passes at batch 1 (a third at batch 64)"
    )
    parser.add_argument("--out", default="runs/bench-text")
    parser.add_argument("--write", default=None, help="write the Markdown table here")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument(
        "--teacher-only",
        action="store_true",
        help="fine-tune (or find) the cached teacher and stop: start student runs side by side after",
    )
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    teacher = teacher_run(args)
    if args.teacher_only:
        return
    results = Path(args.out) / "results.jsonl"
    rows = student_runs(args, teacher, results, train=not args.table_only)
    text = table(rows, teacher, latencies(teacher, args), args)
    print(text)
    if args.write:
        command = "python " + " ".join(
            shlex.quote(a) for a in ["benchmarks/text.py", *(argv or sys.argv[1:])]
        )
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}"
        Path(args.write).write_text(f"<!-- {command} | {machine} -->\n{text}\n")


if __name__ == "__main__":
    main()
