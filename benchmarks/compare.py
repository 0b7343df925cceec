"""Re-time the models of a finished ``distill compare`` run: batch 1, one thread, in interleaved rounds.

Each round times every pipeline's model once (``measure_latency``: warm-up, then ``--repeats`` calls, the
median); rounds alternate the models so that a burst of load on a shared machine hits all of them. Prints
mean ± std over the rounds of those medians, and the teacher's latency divided by each model's.

    python benchmarks/compare.py fashion_mnist/kd train.epochs=1 train.warmup_epochs=0.1 \
        --teacher-recipe fashion_mnist/teacher --out runs/compare-1epoch

Same recipe, overrides and ``--out`` as the comparison, so every model is reused (nothing trains).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from rich.console import Console

from distill.compare import Context, parse_pipelines
from distill.compare import _kd_recipe as kd_recipe
from distill.export import measure_latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--teacher-recipe")
    parser.add_argument("--pipelines", default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    console = Console()
    names = parse_pipelines(args.pipelines)
    kd = kd_recipe(
        args.recipe, args.overrides, args.out, args.teacher_recipe, False, False, console
    )
    ctx = Context(kd, args.out, console)
    made = {name: ctx.get(name) for name in names}
    times: dict[str, list[float]] = {name: [] for name in made}
    for _ in range(args.rounds):
        for name, product in made.items():
            found = measure_latency(
                product.model, ctx.example, batch_sizes=(1,), threads=(1,), warmup=20,
                repeats=args.repeats,
            )  # fmt: skip
            times[name].append(found["latency_ms_b1_t1"])
    teacher = statistics.mean(times["teacher"]) if "teacher" in times else None
    print(
        f"| pipeline | ms @ b1, 1 thread (mean ± std of {args.rounds} round medians) | teacher / this |"
    )
    print("|---|---|---|")
    for name, values in times.items():
        mean, std = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        ratio = f"{teacher / mean:.1f}x" if teacher else "-"
        print(f"| {name} | {mean:.4f} ± {std:.4f} | {ratio} |")


if __name__ == "__main__":
    main()
