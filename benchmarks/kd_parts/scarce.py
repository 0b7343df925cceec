"""Label-scarce part of ``benchmarks/kd_recipes.py``: 100 labels per class, the rest as a transfer set.

Per seed, ``fashion_mnist/scratch_scarce`` (the demo's student on the 1,000 labelled images) and
``fashion_mnist/kd_scarce`` (the same 1,000 labels for the task loss, the other 59,000 training images
without labels for Hinton KD from the demo's cached teacher, read from the teacher cache). Both take
their 1,000 labelled images with the run's seed, so each seed pairs the same labels. Reported: the final
epoch's test top-1, and the share of the scratch-to-teacher gap KD closes, per seed and mean ± std.

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

COMMAND = "python benchmarks/kd_recipes.py --part scarce"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console

    console = Console()
    seeds = list(getattr(args, "seeds", None) or [0, 1, 2])
    out = Path(getattr(args, "out", None) or "runs/kd_recipes") / "scarce"
    started = time.perf_counter()
    teacher_dir, teacher_top1 = demo_teacher(console)
    rows, seconds = [], {"scratch": [], "kd": []}
    for seed in seeds:
        common = [f"train.seed={seed}"]
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
                "scratch": s,
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
            "kd_top1": mean_std([r["kd"] for r in rows]),
            "teacher_top1": teacher_top1,
            "teacher_run": str(teacher_dir),
            "recipes": ["fashion_mnist/scratch_scarce", "fashion_mnist/kd_scarce"],
            "seconds_per_run": {k: round(sum(v) / max(len(v), 1), 1) for k, v in seconds.items()},
            "command": COMMAND,
            "machine": machine(),
            "elapsed_s": round(time.perf_counter() - started, 1),
        },
    }


def render(result: dict[str, Any]) -> str:
    """The label-scarce section of kd_recipes.md."""
    r = result["label_scarce"]
    lines = [
        "## Label-scarce pair: 100 labels per class, the rest as a transfer set",
        "",
        f"Command: `{r['command']}`. Machine: {r['machine']}.",
        "",
        "Scratch: `fashion_mnist/scratch_scarce` (the demo's 6.5k-parameter student on the 1,000 labelled "
        "images, 50 epochs of 16 batches of 64). KD: `fashion_mnist/kd_scarce` (the same 1,000 labels for "
        "the task loss, a quarter of each batch of 256; the other 59,000 training images without labels "
        "for Hinton KD at T=2; 6 passes over the transfer set) from the demo's cached teacher "
        f"({r['teacher_top1']:.2f} % test top-1). Test top-1 of the final epoch; gap closed = "
        "(KD - scratch) / (teacher - scratch), per seed.",
        "",
        "| seed | scratch | KD (transfer set) | gain | gap closed |",
        "|---|---|---|---|---|",
    ]
    for row in r["seeds"]:
        lines.append(
            f"| {row['seed']} | {row['scratch']:.2f} | {row['kd']:.2f} | {row['gain']:+.2f} | "
            f"{row['gap_closed']:.1%} |"
        )
    lines += [
        f"| mean ± std | {fmt(r['scratch_top1'])} | {fmt(r['kd_top1'])} | | "
        f"{r['gap_closed']:.1%} ± {r['gap_closed_std']:.1%} |",
        "",
        f"Target: gap closed >= 80 %. Wall time per run: scratch {r['seconds_per_run']['scratch']:.0f} s, "
        f"KD {r['seconds_per_run']['kd']:.0f} s (teacher outputs cached; from each run's files); "
        f"this call {r['elapsed_s']:.0f} s. Reference measurement from issue 19 (one seed, plain PyTorch): "
        "scratch 79.13 %, KD T=2 6 epochs 88.39 %, teacher 91.52 %.",
    ]
    if r["gap_closed"] < 0.8:
        gain = r["kd_top1"]["mean"] - r["scratch_top1"]["mean"]
        lines += [
            "",
            f"Reading: below the 80 % target. The KD student gains {gain:.1f} points over scratch, but "
            "it is the demo's 6.5k-parameter CNN trained for 6 passes: with all 60,000 labels and KD "
            "from the same teacher it reaches about 90 % at this schedule (the hand-set KD rows of the "
            "tuning part below), so only about 85 % of this gap is within its reach without a longer "
            "schedule. Longer training over the transfer set (the student alone reaches 90.8 % in 30 "
            "epochs, issue 19) and augmented views are the next steps; they were not run here (2 "
            "shared cores).",
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
