"""``distill demo``: the main job on the default data.

Trains (or reuses from the cache) a CNN teacher on Fashion-MNIST, trains the same small student from
scratch and with KD, measures every model the same way and writes ``report.md``, ``report.json`` and a
plot. The recipes are the shipped ``fashion_mnist/{teacher,scratch,kd}.yaml``; how their settings were
chosen is in ``docs/demo.md``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from distill import api
from distill.compare.runs import TINY, cache_dir, cached_run
from distill.config.load import load_recipe
from distill.config.run import open_run
from distill.errors import DistillError
from distill.report import measure, rows_table, write_report
from distill.tasks.base import TeacherPredictions

__all__ = ["TINY", "cache_dir", "run_demo"]


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
        from distill.compare import compare

        data = [f"data.root={data_root}"] if data_root else []
        return compare(
            "fashion_mnist/kd",
            out=out,
            overrides=data,
            teacher_recipe="fashion_mnist/teacher",
            tiny=tiny,
            fresh=fresh,
            console=console,
        )
    started = time.perf_counter()
    common = ([f"data.root={data_root}"] if data_root else []) + (TINY if tiny else [])
    teacher_dir = _teacher_run(common, fresh, console)
    teacher_weights = f"teacher.weights={teacher_dir / 'model.safetensors'}"
    runs = {"teacher": teacher_dir}
    for slug, recipe_name in (
        ("student-scratch", "fashion_mnist/scratch"),
        ("student-kd", "fashion_mnist/kd"),
    ):
        # the KD student reads the teacher's logits from a cache filled once (same results, about half
        # the time: the teacher's forward pass is half of each KD step here)
        extra = [teacher_weights, "distill.cache_teacher=true"] if slug == "student-kd" else []
        recipe = load_recipe(recipe_name, [*common, *extra, f"output={out / slug}"])
        console.rule(slug)
        api.train(recipe, overwrite=True, console=console)
        runs[slug] = out / slug
    rows = _measure_runs(runs, console)
    elapsed = time.perf_counter() - started
    notes = (
        "Accuracy is the last epoch's test top-1 (no checkpoint picking on the test set). Agreement: share of "
        f"test images where the model's top-1 equals the teacher's. Whole demo: {elapsed:.0f} s."
    )
    paths = write_report(
        out, rows, "distill demo: Fashion-MNIST", notes, elapsed_s=round(elapsed, 1), tiny=tiny
    )
    console.print(rows_table(rows, "distill demo: Fashion-MNIST (test set, last epoch)"))
    console.print(
        f"report: {paths['md']}  plot: {paths['plot']}  ({elapsed:.0f} s)", soft_wrap=True
    )
    return {"rows": rows, "paths": {k: str(v) for k, v in paths.items()}, "elapsed_s": elapsed}


def _measure_runs(runs: dict[str, Path], console: Console) -> list[dict[str, Any]]:
    """Measure the teacher and each student run (last checkpoint) on the test set, the same way: the KD
    run's task, test split and teacher (the weights its recipe names) for every row."""
    console.rule("measuring")
    kd = open_run(runs["student-kd"], "last", teacher=True)
    if kd.teacher is None:
        raise DistillError(f"the demo's teacher is missing: {'; '.join(kd.notes)}")
    predictions = TeacherPredictions(kd.teacher)  # each row's agreement, the teacher run once
    loader = kd.test_loader()
    example = kd.test_data.images[0]
    labels = {
        "teacher": "teacher",
        "student-scratch": "student (scratch)",
        "student-kd": "student (KD)",
    }
    rows = []
    for slug, run_dir in runs.items():
        if slug == "teacher":
            model = kd.teacher
        elif slug == "student-kd":
            model = kd.student
        else:
            model = open_run(run_dir, "last", data=(kd.train_data, kd.test_data)).student
        row = measure(labels[slug], model, kd.task, loader, example, teacher=predictions)
        row["run_dir"] = str(run_dir)
        rows.append(row)
    return rows
