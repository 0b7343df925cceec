"""``distill demo``: the main job on the default data.

Trains (or reuses from the cache) a CNN teacher on Fashion-MNIST, trains the same small student from
scratch and with KD, measures every model the same way and writes ``report.md``, ``report.json`` and a
plot. It is a comparison (:mod:`distill.compare`) of three pipelines, ``teacher``, ``student-scratch`` and
``student-kd``, of the shipped ``fashion_mnist/kd.yaml`` (``scratch.yaml`` plus the teacher and the KD
term; the scratch pipeline drops those two), with the teacher of ``fashion_mnist/teacher.yaml``; how
their settings were chosen is in ``docs/demo.md``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from distill import (
    api,  # noqa: F401 - the training entry point (tests patch demo.api.train)
    compare,  # compare.compare is looked up per call (tests replace it)
)
from distill.compare.context import Context, Produced
from distill.compare.runs import TINY, cache_dir, cached_run
from distill.report import measure, rows_table, write_report

__all__ = ["TINY", "cache_dir", "run_demo"]

# where the demo's report sends a reader who wants more from KD than this short, plain pair shows
MORE_KD = (
    "This is plain KD at the demo's budget; the best methods at it, over three seeds: docs/benchmarks/methods_6epoch.md; "
    "longer schedules, a stronger teacher, transfer sets and tuning: docs/benchmarks/kd_recipes.md "
    "(in the distill repository)."
)

# the compare pipelines the demo runs, and their row labels
ROWS = {"teacher": "teacher", "student-scratch": "student (scratch)", "student-kd": "student (KD)"}


def _teacher_run(common: list[str], fresh: bool, console: Console) -> Path:
    """Train the teacher once per distinct recipe; later demos (and comparisons) reuse it from the cache."""
    return cached_run("fashion_mnist/teacher", common, fresh, console)


def run_demo(
    out: str | Path = "runs/demo",
    data_root: str | None = None,
    tiny: bool = False,
    fresh: bool = False,
    console: Console | None = None,
    compress: bool = False,
) -> dict[str, Any]:
    """Run the demo; returns the report payload (``rows``: teacher, scratch student, KD student).

    ``compress`` adds the compression rows (pruned teacher, pruned-then-distilled, ONNX and int8 exports):
    the demo is then ``distill compare fashion_mnist/kd`` with the demo's teacher, into ``out``.
    """
    console = console or Console()
    out = Path(out)
    if compress:
        data = [f"data.root={data_root}"] if data_root else []
        return compare.compare(
            "fashion_mnist/kd",
            out=out,
            overrides=data,
            teacher_recipe="fashion_mnist/teacher",
            tiny=tiny,
            fresh=fresh,
            console=console,
        )
    started = time.perf_counter()
    # the KD student reads the teacher's logits from a cache filled once (same results, about half the
    # time: the teacher's forward pass is half of each KD step here)
    overrides = [*([f"data.root={data_root}"] if data_root else []), "distill.cache_teacher=true"]
    kd = compare._kd_recipe(
        "fashion_mnist/kd", overrides, out, "fashion_mnist/teacher", tiny, fresh, console
    )
    # the students train every time (as `distill train --overwrite`), the teacher comes from the cache
    ctx = Context(kd, out, console, fresh=True)
    made = {slug: ctx.get(slug) for slug in ROWS}
    rows = _measure(ctx, made, console)
    elapsed = time.perf_counter() - started
    notes = (
        "Accuracy is the last epoch's test top-1 (no checkpoint picking on the test set). Agreement: share of "
        f"test images where the model's top-1 equals the teacher's. Whole demo: {elapsed:.0f} s. "
        + MORE_KD
    )
    paths = write_report(
        out, rows, "distill demo: Fashion-MNIST", notes, elapsed_s=round(elapsed, 1), tiny=tiny
    )
    console.print(rows_table(rows, "distill demo: Fashion-MNIST (test set, last epoch)"))
    console.print(
        f"report: {paths['md']}  plot: {paths['plot']}  ({elapsed:.0f} s)", soft_wrap=True
    )
    return {"rows": rows, "paths": {k: str(v) for k, v in paths.items()}, "elapsed_s": elapsed}


def _measure(ctx: Context, made: dict[str, Produced], console: Console) -> list[dict[str, Any]]:
    """Measure the teacher and both students (last checkpoint) on the test set, the same way."""
    console.rule("measuring")
    loader, example = ctx.test_loader(), ctx.test_data.images[0]
    rows = []
    for slug, product in made.items():
        row = measure(
            ROWS[slug], product.model, ctx.task, loader, example, teacher=ctx.teacher_predictions
        )
        teacher_dir = Path(str(ctx.recipe.teacher.weights)).parent  # type: ignore[union-attr]
        row["run_dir"] = str(teacher_dir if product.artefact is None else product.artefact.parent)
        rows.append(row)
    return rows
