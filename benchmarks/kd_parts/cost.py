"""Part ``cost``: what patient, consistent teaching costs per epoch, with and without the view cache.

Three trainings of the full 60k training set, ``--steps`` steps each, in ``--rounds`` interleaved rounds
(the machine is shared, so each round runs the three back to back), one torch thread:

* ``scratch+aug``: ``fashion_mnist/scratch_aug`` (fresh views every step, no teacher);
* ``kd cached``: ``fashion_mnist/kd_patient`` (stored views and the teacher's stored outputs);
* ``kd online``: the same recipe with ``cache_teacher: false`` (consistent teaching, the teacher runs on
  every augmented batch: the reference).

Speed is the median of the logged ``samples_per_s`` (the step loop only, between log points; the build,
the cache's read or fill and the final evaluation are outside it). ``cache_cost_ratio`` = kd cached /
scratch+aug. The one-off fill time is the one the view cache recorded in its manifest when it was filled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from kd_parts._jobs import machine, teacher_run

VARIANTS = {
    "scratch+aug": ("fashion_mnist/scratch_aug", []),
    "kd cached": ("fashion_mnist/kd_patient", ["@teacher"]),
    "kd online": (
        "fashion_mnist/kd_patient",
        ["@teacher", "distill.cache_teacher=false", "distill.cache_views=0"],
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--note", default="", help="a sentence for the report (budget, what was cut)"
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="runs/bench/kd_recipes/cost")
    parser.add_argument(
        "--teacher",
        default="fashion_mnist/teacher_strong",
        help="the teacher's recipe (trained once, cached)",
    )


def one(recipe: str, overrides: list[str], out: Path, steps: int) -> tuple[float, float | None]:
    """(median samples/s of the step loop, the view cache's recorded fill seconds or None)."""
    from io import StringIO

    from rich.console import Console

    from distill.config.build import build, make_trainer
    from distill.config.load import load_recipe

    more = [
        f"train.max_steps={steps}",
        "train.log_every=10",
        "train.progress=false",
        "data.test_subset=256",
        f"output={out}",
    ]
    built = build(load_recipe(recipe, [*overrides, *more]))
    make_trainer(built, run_dir=out, console=Console(file=StringIO())).fit()
    rates = [
        r["samples_per_s"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if r.get("event") == "train" and r["step"] > 10  # the first window holds warm-up
    ]
    fill = None
    source = built.distiller.source
    store = getattr(source, "store", None)
    if store is not None and store.folder is not None:
        fill = json.loads((store.folder / "manifest.json").read_text()).get("fill_seconds")
    return statistics.median(rates), fill


def run(args: argparse.Namespace) -> dict[str, Any]:
    import shutil

    import torch

    torch.set_num_threads(1)
    teacher = teacher_run(args.teacher)
    weights = teacher / "model.safetensors"
    rates: dict[str, list[float]] = {k: [] for k in VARIANTS}
    fill = None
    started = time.perf_counter()
    for r in range(args.rounds):
        for name, (recipe, overrides) in VARIANTS.items():
            given = [f"teacher.weights={weights}" if o == "@teacher" else o for o in overrides]
            out = Path(args.out) / f"{name.replace(' ', '_').replace('+', 'p')}-{r}"
            shutil.rmtree(out, ignore_errors=True)
            rate, filled = one(recipe, given, out, args.steps)
            rates[name].append(rate)
            fill = filled if filled is not None else fill
            print(f"round {r} {name}: {rate:.0f} samples/s", flush=True)
    median = {k: statistics.median(v) for k, v in rates.items()}
    ratio = median["kd cached"] / median["scratch+aug"]
    return {
        "summary": {"cache_cost_ratio": ratio},
        "samples_per_s": rates,
        "median_samples_per_s": median,
        "online_over_scratch": median["kd online"] / median["scratch+aug"],
        "fill_seconds": fill,
        "steps": args.steps,
        "rounds": args.rounds,
        "wall_seconds": time.perf_counter() - started,
        "machine": machine(),
        "note": args.note,
        "command": f"OMP_NUM_THREADS=1 python benchmarks/kd_recipes.py --part cost --steps {args.steps} "
        f"--rounds {args.rounds} --teacher {args.teacher}",
    }


def render(result: dict[str, Any]) -> str:
    med = result["median_samples_per_s"]
    lines = [
        "## Cost of consistent teaching (part `cost`)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['machine']}; one torch thread; {result['steps']} steps of batch 256 per "
        f"training, {result['rounds']} interleaved rounds. Speed: median logged samples/s of the step loop.",
        "",
        "| training | samples/s per round | median | vs scratch+aug |",
        "|---|---|---|---|",
    ]
    for name, rates in result["samples_per_s"].items():
        cells = ", ".join(f"{r:.0f}" for r in rates)
        lines.append(
            f"| {name} | {cells} | {med[name]:.0f} | {med[name] / med['scratch+aug']:.2f}x |"
        )
    fill = result.get("fill_seconds")
    lines += [
        "",
        f"`cache_cost_ratio` (KD with the view cache over scratch with the same augmentation): "
        f"**{result['summary']['cache_cost_ratio']:.2f}** (target >= 0.9); the uncached consistent-teaching "
        f"epoch runs at {result['online_over_scratch']:.2f}x.",
        "",
        "One-off fill of the view cache (4 views of 60k samples through the teacher, recorded in its "
        "manifest): " + (f"{fill:.0f} s." if fill is not None else "not recorded."),
    ]
    if result.get("note"):
        lines += ["", f"Note: {result['note']}"]
    return "\n".join(lines) + "\n"
