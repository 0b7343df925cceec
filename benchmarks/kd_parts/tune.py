"""Tuning part of ``benchmarks/kd_recipes.py``: a ``distill tune`` study on the demo pair, then the tuned
recipe against the hand-set one on the test split.

The study is ``distill tune fashion_mnist/kd_tune`` (temperature, KD weight and learning rate; each
trial trains the shipped schedule on 50,000 training images and is scored on the other 10,000) with the
demo's cached teacher. Then, per seed, the study's ``best.yaml`` and the hand-set ``fashion_mnist/kd`` train with
the full shipped schedule (6 epochs, 60,000 images; teacher outputs cached) and are scored on the test
split, final epoch. ``tune_wins``: the seeds on which the tuned recipe's test top-1 is higher.

Run alone: ``python benchmarks/kd_parts/tune.py [--seeds 0 1 2] [--trials N]``; it writes
``docs/benchmarks/kd_recipes/tune.json``. Finished runs and the study under ``--out`` are reused.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: run alone too
from kd_parts._common import (  # noqa: E402
    OUT,
    demo_teacher,
    fmt,
    machine,
    mean_std,
    run_seconds,
    train_once,
    write_part,
)

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/kd_recipes.py --part tune"
READING = (
    "Reading: the target (a win on >= 2 of 3 seeds) is met, but the gain is small and within noise "
    "(+0.16 ± 0.34 points; seed 0 is a loss). What changed from the first study, which lost on every "
    "seed: its trials trained 2 epochs on 12,000 images with median pruning, which can rank settings by "
    "how fast they learn, not by where the 6-epoch schedule ends (its best trial, lr 0.34 and task "
    "weight 0.71, lost by 0.29 points on test). Here every trial trains the shipped schedule on 50,000 "
    "images, nothing is pruned (a cosine schedule's mid-run accuracy can rank learning rates wrongly), the "
    "task weight stays 1 and the search is over three values, so 10 trials leave TPE six to work with, "
    "and validation is 10,000 images. The trials cost about as much as the final runs, which is what "
    "makes a 10-trial study take 25 minutes here. The study's own evidence is thin: the hand-set values "
    "(trial 0, 90.20 on validation) rank third of ten, the best trial is 0.37 points above them, and "
    "with one seed per trial and 10,000 validation images (about 0.3 points of sampling error) that is "
    "about one standard error. A study that scores each trial on two or three seeds would tell the "
    "flat top of this space (T 1.1 to 3.1, lr 0.2 to 0.39: 90.06 to 90.57) apart better; it was not run."
)
# the first study (before full-length trials), for a tune.json that does not record its spec
OLD_STUDY: dict[str, Any] = {
    "params": [
        {"path": "distill.terms.0.options.temperature", "low": 1.0, "high": 8.0, "log": True},
        {"path": "distill.terms.0.weight", "low": 0.25, "high": 4.0, "log": True},
        {"path": "distill.task_weight", "low": 0.1, "high": 1.5},
        {"path": "train.lr", "low": 0.1, "high": 0.4, "log": True},
    ],
    "validation": 5000,
    "pruner": "median",
    "startup_trials": 3,
    "trial_epochs": 2,
    "trial_train_subset": 12000,
    "hand_set_first": False,
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console

    from distill.tune import tune

    console = Console()
    seeds = list(getattr(args, "seeds", None) or [0, 1, 2])
    trials = getattr(args, "trials", None)  # None: the recipe's tune.trials
    out = Path(getattr(args, "out", None) or "runs/kd_recipes") / "tune"
    started = time.perf_counter()
    teacher_dir, teacher_top1 = demo_teacher(console)
    teacher = [f"teacher.weights={teacher_dir}"]
    t0 = time.perf_counter()
    saved = out / "study" / "study.json"  # a resumed study: its first run's wall time counts
    before = json.loads(saved.read_text())["elapsed_s"] if saved.is_file() else 0.0
    study = tune(
        "fashion_mnist/kd_tune", teacher, trials=trials, out=out / "study", console=console
    )
    # a resumed study's own time is small: its trials ran in an earlier call (one after another)
    study_s = max(before + time.perf_counter() - t0, study["trial_seconds"])
    best = study["paths"]["best"]
    with open(study["paths"]["csv"], newline="") as f:
        trial_rows = list(csv.DictReader(f))
    plot = OUT / "tune_study.png"  # the study's plot, next to the part's JSON
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(study["paths"]["plot"], plot)
    rows, seconds = [], {"hand": [], "tuned": []}
    for seed in seeds:
        common = [*teacher, f"train.seed={seed}", "distill.cache_teacher=true"]
        hand = train_once("fashion_mnist/kd", common, out / f"hand-s{seed}", console)
        seconds["hand"].append(run_seconds(out / f"hand-s{seed}"))
        tuned = train_once(best, common, out / f"tuned-s{seed}", console)
        seconds["tuned"].append(run_seconds(out / f"tuned-s{seed}"))
        h, t = hand["last"]["top1"], tuned["last"]["top1"]
        rows.append({"seed": seed, "hand": h, "tuned": t, "gain": t - h})
        console.print(f"seed {seed}: hand-set {h:.2f}  tuned {t:.2f}")
    wins = sum(r["tuned"] > r["hand"] for r in rows)
    return {
        "summary": {"tune_wins": wins},
        "tune_wins": wins,
        "tune": {
            "seeds": rows,
            "hand_top1": mean_std([r["hand"] for r in rows]),
            "tuned_top1": mean_std([r["tuned"] for r in rows]),
            "gain": mean_std([r["gain"] for r in rows]),
            "study": study,
            "trial_rows": trial_rows,
            "study_s": round(study_s, 1),
            "spec": study_spec(),
            "teacher_top1": teacher_top1,
            "teacher_run": str(teacher_dir),
            "seconds_per_run": {k: round(sum(v) / max(len(v), 1), 1) for k, v in seconds.items()},
            "command": COMMAND,
            "machine": machine(),
            "elapsed_s": round(time.perf_counter() - started, 1),
        },
    }


def study_spec() -> dict[str, Any]:
    """What the study searches and how its trials train (from the recipe's ``tune:`` section)."""
    from distill.config.load import load_recipe

    base = load_recipe("fashion_mnist/kd_tune")
    spec = base.tune
    trial = load_recipe("fashion_mnist/kd_tune", spec.overrides)
    return {
        "params": [p.model_dump(exclude_defaults=True) for p in spec.params],
        "validation": spec.validation,
        "pruner": spec.pruner,
        "startup_trials": spec.startup_trials,
        "overrides": spec.overrides,
        "trial_epochs": trial.train.epochs,
        "trial_train_subset": trial.data.train_subset,
    }


def _cell(value: str) -> str:
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def render(result: dict[str, Any]) -> str:
    """The tuning section of kd_recipes.md."""
    r, study = result["tune"], result["tune"]["study"]
    counts = ", ".join(f"{n} {state}" for state, n in study["trials"].items())
    spec = r.get("spec") or OLD_STUDY  # a tune.json written before the spec was recorded
    searched = ", ".join(
        f"{p['path']} in [{p['low']:g}, {p['high']:g}]{' (log)' if p.get('log') else ''}"
        for p in spec["params"]
    )
    trained = spec["trial_train_subset"] or 60_000 - spec["validation"]
    how = (
        (
            f"the hand-set values are trial 0, then {spec['startup_trials'] - 1} random trials before "
            if spec.get("hand_set_first", True)
            else f"{spec['startup_trials']} random trials before "
        )
        + "TPE; "
        f"each trial trains {spec['trial_epochs']} epochs on {trained:,} training images and is scored "
        f"on {spec['validation']:,} other training images (the test split is never read); pruner: "
        f"{spec['pruner']}"
    )
    params = ", ".join(
        f"{k.split('.')[-1] if 'options' in k else k} = {v:.3g}"
        for k, v in study["best_params"].items()
    )
    lines = [
        "## Tuning: `distill tune` on the demo pair",
        "",
        f"Command: `{r['command']}`. Machine: {r['machine']}.",
        "",
        "Study: `distill tune fashion_mnist/kd_tune` with the demo's cached teacher "
        f"({r['teacher_top1']:.2f} % test top-1): TPE over {searched}; {how}. "
        f"Trials: {counts}, one after another; study time {r['study_s']:.0f} s. "
        f"Best trial {study['best_trial']}: validation top-1 {study['best_value']:.2f}, {params}.",
        "",
        "| " + " | ".join(r["trial_rows"][0]) + " |",
        "|" + "---|" * len(r["trial_rows"][0]),
        *("| " + " | ".join(_cell(v) for v in row.values()) + " |" for row in r["trial_rows"]),
        "",
        "![the study](kd_recipes/tune_study.png)",
        "",
        "Then the tuned recipe (`best.yaml`) and the hand-set `fashion_mnist/kd` (T=2, weights 1 and 1, "
        "lr 0.2) train with the shipped schedule (6 epochs on 60,000 images, teacher outputs cached) and "
        "are scored on the test split, final epoch:",
        "",
        "| seed | hand-set KD | tuned KD | gain |",
        "|---|---|---|---|",
    ]
    for row in r["seeds"]:
        lines.append(
            f"| {row['seed']} | {row['hand']:.2f} | {row['tuned']:.2f} | {row['gain']:+.2f} |"
        )
    lines += [
        f"| mean ± std | {fmt(r['hand_top1'])} | {fmt(r['tuned_top1'])} | {fmt(r['gain'])} |",
        "",
        f"tune_wins: {result['tune_wins']} of {len(r['seeds'])} seeds (target >= 2). Wall time per run: "
        f"hand-set {r['seconds_per_run']['hand']:.0f} s, tuned {r['seconds_per_run']['tuned']:.0f} s "
        f"(from each run's files); this call {r['elapsed_s']:.0f} s.",
    ]
    lines += ["", READING]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--trials", type=int, default=None, help="trials in the study (default: the recipe's)"
    )
    parser.add_argument("--out", default="runs/kd_recipes", help="where the runs go (reused)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    result = run(args)
    print(write_part("tune", result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
