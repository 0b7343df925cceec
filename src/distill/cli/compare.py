"""``distill compare``: distillation next to pruning, quantization and export (see :func:`distill.compare.compare`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from distill.cli import app
from distill.cli.commands import DEVICE_HELP, Overrides, console
from distill.compare import DEFAULT_PIPELINES, PIPELINES, TASK_DEFAULT_PIPELINES, compare


@app.command("compare")
def compare_(
    recipe: Annotated[
        str, typer.Argument(help="a KD recipe (teacher, student, KD terms), e.g. fashion_mnist/kd")
    ],
    overrides: Overrides = None,
    pipelines: Annotated[
        str | None,
        typer.Option(
            help="comma-separated pipeline names (default: the recipe's compare.pipelines, else the "
            "task's default ones; see --list)"
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="where the runs and the report go (default: compare.out, runs/compare)"),
    ] = None,
    teacher_recipe: Annotated[
        str | None,
        typer.Option(
            help="train (once, cached) the teacher with this recipe, e.g. fashion_mnist/teacher "
            "(default: compare.teacher_recipe)"
        ),
    ] = None,
    tiny: Annotated[
        bool | None,
        typer.Option(help="a seconds-long smoke run on a data subset (default: compare.tiny, off)"),
    ] = None,
    fresh: Annotated[bool, typer.Option(help="retrain everything, even finished runs")] = False,
    latency_repeats: Annotated[
        int | None,
        typer.Option(
            help="timed forward passes per latency cell (after as many warm-up ones, <= 10; "
            "default: compare.latency_repeats, 50)"
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            help=f"{DEVICE_HELP}; for the accuracy of the torch models (ONNX rows and every latency: CPU)"
        ),
    ] = "cpu",
    bench_results: Annotated[
        str | None,
        typer.Option(
            help="comma-separated `distill bench --out` JSON files to merge into the report (rows "
            "matched by file hash; default: compare.bench_results)"
        ),
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the pipelines and exit")] = False,
) -> None:
    """Teacher, students, pruned, ONNX and int8 models from one KD recipe, measured the same way.
    Settings come from the recipe's compare: section; a flag given here overrides its setting."""
    if list_:
        for name in PIPELINES.names():
            marks = ["default"] if name in DEFAULT_PIPELINES else []
            marks += [
                f"{t} default" for t, names in TASK_DEFAULT_PIPELINES.items() if name in names
            ]
            marked = f" ({', '.join(marks)})" if marks else ""
            console.print(
                f"{name}{marked}: {PIPELINES.meta(name)['about']}", soft_wrap=True, highlight=False
            )
        return
    compare(
        recipe,
        pipelines=pipelines,
        out=out,
        overrides=overrides or [],
        teacher_recipe=teacher_recipe,
        tiny=tiny,
        fresh=fresh,
        latency_repeats=latency_repeats,
        console=console,
        device=device,
        bench_results=[p.strip() for p in bench_results.split(",") if p.strip()]
        if bench_results
        else None,
    )
