"""Label-scarce part of ``benchmarks/kd_recipes.py``: 100 labels per class, the rest as a transfer set.

Per seed, ``fashion_mnist/scratch_scarce`` (the demo's student on the 1,000 labelled images, as many
optimizer steps of 64 labelled rows as the KD run takes), the same recipe at 50 epochs (800 steps: is the
scratch student converged?) and ``fashion_mnist/kd_scarce`` (the same 1,000 labels for the task loss, 64
rows of each batch of 256, the other 59,000 training images without labels for Hinton KD from the demo's
cached teacher, read from the teacher cache). All take their 1,000 labelled images with the run's seed, so
each seed pairs the same labels. Reported: the final epoch's test top-1, and the share of the
scratch-to-teacher gap KD closes against the step-matched scratch run, per seed and mean ± std.

Run alone: ``python benchmarks/kd_parts/scarce.py [--seeds 0 1 2]``; it writes
``docs/benchmarks/kd_recipes/scarce.json``. Finished runs under ``--out`` are reused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: run alone too
from kd_parts._common import (  # noqa: E402
    demo_teacher,
    fmt,
    machine,
    mean_std,
    run_seconds,
    train_once,
    write_part,
)

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/kd_recipes.py --part scarce"
READING = (
    "Reading: the target is met on every seed. What changed from the first measurement (6 passes over "
    "the transfer set, 1,848 steps, against scratch at 800 steps: KD 88.99 ± 0.11 vs scratch 79.16 ± "
    "1.17, 78.0 % of the gap, 2 of 3 seeds below 80 %) is the schedule alone, at the same temperature, "
    "weights and labelled share: the 6-pass KD runs ended at 89.09, 88.87 and 89.01, the 12-pass ones "
    "end 0.5 to 0.7 points higher. The scratch student has converged: 4.6 times as many steps move it "
    "by -0.35 to +0.99 points per seed (columns 'scratch, 800 steps' and 'scratch'), and against the "
    "better of its two schedules on each seed KD still closes 81.4 % or more of the gap. Not tried: "
    "other temperatures, labelled shares and augmented transfer batches (2 shared cores)."
)
SHORT_EPOCHS = 50  # the scratch schedule before it was matched to KD's steps: 800 steps of 64


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console

    console = Console()
    seeds = list(getattr(args, "seeds", None) or [0, 1, 2])
    out = Path(getattr(args, "out", None) or "runs/kd_recipes") / "scarce"
    started = time.perf_counter()
    teacher_dir, teacher_top1 = demo_teacher(console)
    rows, seconds = [], {"scratch": [], "scratch_short": [], "kd": []}
    for seed in seeds:
        common = [f"train.seed={seed}"]
        short = train_once(
            "fashion_mnist/scratch_scarce",
            [*common, f"train.epochs={SHORT_EPOCHS}", "train.eval_every=10"],
            out / f"scratch50-s{seed}",
            console,
        )
        seconds["scratch_short"].append(run_seconds(out / f"scratch50-s{seed}"))
        scratch = train_once(
            "fashion_mnist/scratch_scarce", common, out / f"scratch-s{seed}", console
        )
        seconds["scratch"].append(run_seconds(out / f"scratch-s{seed}"))
        kd = train_once(
            "fashion_mnist/kd_scarce",
            [*common, f"teacher.weights={teacher_dir}", "distill.cache_teacher=true"],
            out / f"kd-s{seed}",
            console,
        )
        seconds["kd"].append(run_seconds(out / f"kd-s{seed}"))
        s, k = scratch["last"]["top1"], kd["last"]["top1"]
        rows.append(
            {
                "seed": seed,
                "scratch_800_steps": short["last"]["top1"],
                "scratch": s,
                "scratch_steps": scratch.get("steps"),
                "kd_steps": kd.get("steps"),
                "kd": k,
                "gain": k - s,
                "gap_closed": (k - s) / (teacher_top1 - s),
                "labels": kd.get("labels"),
            }
        )
        console.print(
            f"seed {seed}: scratch {s:.2f}  kd {k:.2f}  gap closed {rows[-1]['gap_closed']:.2%}"
        )
    gap = mean_std([r["gap_closed"] for r in rows])
    return {
        "summary": {"label_scarce": {"gap_closed": gap["mean"], "seeds": rows}},
        "label_scarce": {
            "gap_closed": gap["mean"],
            "gap_closed_std": gap["std"],
            "seeds": rows,
            "scratch_top1": mean_std([r["scratch"] for r in rows]),
            "scratch_800_steps_top1": mean_std([r["scratch_800_steps"] for r in rows]),
            "kd_top1": mean_std([r["kd"] for r in rows]),
            "teacher_top1": teacher_top1,
            "teacher_run": str(teacher_dir),
            "recipes": ["fashion_mnist/scratch_scarce", "fashion_mnist/kd_scarce"],
            "schedule": schedule(),
            "seconds_per_run": {k: round(sum(v) / max(len(v), 1), 1) for k, v in seconds.items()},
            "command": COMMAND,
            "machine": machine(),
            "elapsed_s": round(time.perf_counter() - started, 1),
        },
    }


def schedule() -> dict[str, Any]:
    """What the two shipped recipes train: epochs, batch, labelled rows per step, KD temperature."""
    from distill.config.load import load_recipe

    kd = load_recipe("fashion_mnist/kd_scarce")
    scratch = load_recipe("fashion_mnist/scratch_scarce")
    transfer = kd.data.transfer
    labelled = round(transfer.labelled_fraction * kd.train.batch_size)
    return {
        "kd_epochs": kd.train.epochs,
        "kd_batch": kd.train.batch_size,
        "kd_labelled_per_batch": labelled,
        "temperature": kd.distill.terms[0].options.get("temperature"),
        "kd_weight": kd.distill.terms[0].weight,
        "task_weight": kd.distill.task_weight,
        "scratch_epochs": scratch.train.epochs,
        "scratch_batch": scratch.train.batch_size,
        "scratch_lr": scratch.train.lr,
        "kd_lr": kd.train.lr,
    }


def render(result: dict[str, Any]) -> str:
    """The label-scarce section of kd_recipes.md."""
    r = result["label_scarce"]
    sch = r["schedule"]
    steps = r["seeds"][0].get("kd_steps")
    lines = [
        "## Label-scarce pair: 100 labels per class, the rest as a transfer set",
        "",
        f"Command: `{r['command']}`. Machine: {r['machine']}.",
        "",
        f"KD: `fashion_mnist/kd_scarce`, the demo's 6.5k-parameter student from the demo's cached teacher "
        f"({r['teacher_top1']:.2f} % test top-1): the 1,000 labelled images for the task loss "
        f"({sch['kd_labelled_per_batch']} rows of each batch of {sch['kd_batch']}, cycled), the other "
        f"59,000 training images without labels for Hinton KD at T={sch['temperature']:g} (weights "
        f"{sch['task_weight']:g} and {sch['kd_weight']:g}, lr {sch['kd_lr']:g}), {sch['kd_epochs']} passes "
        f"over the transfer set ({steps:,} optimizer steps). Scratch: `fashion_mnist/scratch_scarce`, the "
        f"same student on the same 1,000 labelled images, batches of {sch['scratch_batch']}, "
        f"{sch['scratch_epochs']} epochs = {r['seeds'][0].get('scratch_steps'):,} steps, i.e. as many "
        "optimizer steps and labelled rows per step as KD (lr "
        f"{sch['scratch_lr']:g}); the column 'scratch, 800 steps' is the same recipe at "
        f"{SHORT_EPOCHS} epochs, the schedule it had before, to show scratch has converged. Test top-1 "
        "of the final epoch; gap closed = (KD - scratch) / (teacher - scratch) against the step-matched "
        "scratch run, per seed.",
        "",
        "| seed | scratch, 800 steps | scratch | KD (transfer set) | gain | gap closed |",
        "|---|---|---|---|---|---|",
    ]
    for row in r["seeds"]:
        lines.append(
            f"| {row['seed']} | {row['scratch_800_steps']:.2f} | {row['scratch']:.2f} | "
            f"{row['kd']:.2f} | {row['gain']:+.2f} | {row['gap_closed']:.1%} |"
        )
    lines += [
        f"| mean ± std | {fmt(r['scratch_800_steps_top1'])} | {fmt(r['scratch_top1'])} | "
        f"{fmt(r['kd_top1'])} | | {r['gap_closed']:.1%} ± {r['gap_closed_std']:.1%} |",
        "",
        f"Target: gap closed >= 80 %: **{'met' if r['gap_closed'] >= 0.8 else 'missed'}** "
        f"({r['gap_closed']:.1%}; lowest seed {min(x['gap_closed'] for x in r['seeds']):.1%}). "
        f"Wall time per run: scratch {r['seconds_per_run']['scratch']:.0f} s, KD "
        f"{r['seconds_per_run']['kd']:.0f} s (teacher outputs cached; from each run's files); this call "
        f"{r['elapsed_s']:.0f} s. Reference measurement from issue 19 (one seed, plain PyTorch): "
        "scratch 79.13 %, KD T=2 6 epochs 88.39 %, teacher 91.52 %.",
        "",
        READING,
    ]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/kd_recipes", help="where the runs go (reused)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    result = run(args)
    print(write_part("scarce", result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
