"""One small function per command; each calls one public function."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from distill import api
from distill import demo as demo_job
from distill.cli import app
from distill.errors import DistillError, TrainingInterrupted, did_you_mean

console = Console()

Overrides = Annotated[
    list[str] | None, typer.Argument(help="key=value overrides, e.g. train.epochs=5")
]


@app.command()
def train(
    recipe: Annotated[str, typer.Argument(help="recipe YAML path or shipped recipe name")],
    overrides: Overrides = None,
    resume: Annotated[
        bool, typer.Option(help="continue the run in the recipe's output folder")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="discard an earlier run's checkpoints in that folder")
    ] = False,
) -> None:
    """Train a student (or a teacher) as a recipe describes."""
    try:
        summary = api.train(
            recipe, overrides or [], resume=resume, overwrite=overwrite, console=console
        )
    except TrainingInterrupted as err:
        err.command = shlex.join(["distill", "train", recipe, *(overrides or [])])
        raise
    best = summary.get("best") or {}
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the run
        return
    metric = summary.get("primary_metric", "top1")
    console.print(
        f"done: {summary['run_dir']}  best {metric} {best.get(metric, float('nan')):.2f} "
        f"(epoch {best.get('epoch')})",
        soft_wrap=True,
    )


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="a folder written by `distill train`")],
    checkpoint: Annotated[str, typer.Option(help="best or last")] = "best",
) -> None:
    """Evaluate a trained run's student on the test split."""
    metrics = api.evaluate(run_dir, checkpoint)
    table = Table("metric", "value", title=str(run_dir))
    for key, value in metrics.items():
        table.add_row(key, str(int(value)) if float(value).is_integer() else f"{value:.4g}")
    console.print(table)
    for note in getattr(metrics, "notes", []):
        console.print(f"note: {note}", soft_wrap=True, markup=False, highlight=False)


@app.command()
def validate(recipes: Annotated[list[str], typer.Argument(help="recipe files to check")]) -> None:
    """Check recipes without training: schema, names, loss options, includes."""
    for path, recipe in zip(recipes, api.validate(recipes), strict=True):
        what = f"({recipe.name})" if recipe is not None else "(include fragment)"
        # one line per file, for scripts
        console.print(f"[green]ok[/] {escape(path)} {what}", soft_wrap=True)


@app.command()
def config(recipe: Annotated[str, typer.Argument()], overrides: Overrides = None) -> None:
    """Print the resolved recipe (defaults, includes and overrides applied)."""
    typer.echo(api.resolve(recipe, overrides or []), nl=False)


LISTABLE = (
    "losses",
    "models",
    "datasets",
    "tasks",
    "projectors",
    "schedules",
    "callbacks",
    "recipes",
)


@app.command("list")
def list_(what: Annotated[str, typer.Argument(help=f"one of: {', '.join(LISTABLE)}")]) -> None:
    """List registered losses, models, datasets, tasks, projectors, schedules or shipped recipes."""
    if what not in LISTABLE:
        raise DistillError(
            f"cannot list {what!r}.{did_you_mean(what, LISTABLE)} Choose from {', '.join(LISTABLE)}"
        )
    table = Table(title=what)
    for row in api.catalogue(what):
        if not table.columns:
            for i, key in enumerate(row):
                table.add_column(key, no_wrap=i == 0)  # names stay whole on narrow terminals
        table.add_row(*(escape(str(v)) for v in row.values()))
    console.print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="where the report goes")] = Path("runs/demo"),
    data_root: Annotated[
        str | None, typer.Option(help="Fashion-MNIST folder (default: find or download)")
    ] = None,
    tiny: Annotated[bool, typer.Option(help="a seconds-long smoke run on a data subset")] = False,
    fresh: Annotated[
        bool, typer.Option(help="retrain the teacher even if a cached one exists")
    ] = False,
    compress: Annotated[
        bool,
        typer.Option(
            help="add the compression rows: pruned teacher, prune-then-distill, ONNX and int8 (distill compare)"
        ),
    ] = False,
) -> None:
    """Teacher, scratch student and KD student on Fashion-MNIST, with a report."""
    demo_job.run_demo(
        out, data_root=data_root, tiny=tiny, fresh=fresh, console=console, compress=compress
    )
