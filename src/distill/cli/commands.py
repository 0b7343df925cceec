"""One small function per command; each calls one public function."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from distill import api
from distill import demo as demo_job
from distill.cli import app
from distill.errors import DistillError, TrainingInterrupted, did_you_mean

console = Console()

DEVICE_HELP = "where the models run: cpu, cuda, cuda:N, mps or auto (the GPU when there is one)"

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


@app.command()
def tune(
    recipe: Annotated[str, typer.Argument(help="recipe YAML path or shipped recipe name")],
    overrides: Overrides = None,
    trials: Annotated[
        int | None, typer.Option(min=1, help="trials in the study (default: tune.trials)")
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(min=1, help="trials at once, in separate processes (default: tune.jobs)"),
    ] = None,
    out: Annotated[
        str | None, typer.Option(help="study folder (default: tune.out or runs/<name>-tune)")
    ] = None,
) -> None:
    """Search the ranges of the recipe's tune: section with Optuna; resumes an interrupted study."""
    from distill.tune import tune as run_tune

    result = run_tune(recipe, overrides or [], trials=trials, jobs=jobs, out=out, console=console)
    console.print(f"best recipe: {result['paths']['best']}  table: {result['paths']['md']}")


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="a folder written by `distill train`")],
    checkpoint: Annotated[str, typer.Option(help="best or last")] = "best",
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
) -> None:
    """Evaluate a trained run's student on the test split."""
    metrics = api.evaluate(run_dir, checkpoint, device=device)
    table = Table("metric", "value", title=str(run_dir))
    for key, value in metrics.items():
        table.add_row(key, str(int(value)) if float(value).is_integer() else f"{value:.4g}")
    console.print(table)
    if metrics.confusion is not None:  # classification: the accuracy of each true class
        per_class = zip(metrics.classes, metrics.confusion, metrics.per_class, strict=True)
        classes = Table("class", "test samples", "accuracy %", title="per class (confusion.png)")
        for name, row, acc in per_class:
            classes.add_row(name, str(sum(row)), "-" if acc != acc else f"{acc:.2f}")
        console.print(classes)
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
    "taps",
)


@app.command("list")
def list_(
    what: Annotated[
        str,
        typer.Argument(help=f"one of: {', '.join(LISTABLE)}", autocompletion=lambda: LISTABLE),
    ],
    model: Annotated[
        list[str] | None,
        typer.Argument(
            help="taps only: a model name and its key=value options (num_classes=, in_channels= "
            "too), e.g. torchvision:resnet18 or cnn channels=[8,16]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """List registered losses, models, datasets, tasks, projectors, schedules or shipped recipes, or the
    module names of a model (``distill list taps MODEL``) for a term's student/teacher taps.

    Printed to a terminal: a table; to a pipe or file: tab-separated lines, a header first, never cut."""
    if what not in LISTABLE:
        raise DistillError(
            f"cannot list {what!r}.{did_you_mean(what, LISTABLE)} Choose from {', '.join(LISTABLE)}"
        )
    if what == "taps":
        if not model:
            raise DistillError(
                "distill list taps needs a model name, e.g. distill list taps torchvision:resnet18"
            )
        options = _key_values(model[1:])
        shape = {k: options.pop(k) for k in ("num_classes", "in_channels") if k in options}
        rows = api.model_modules(model[0], options, **shape)
        title = f"modules of {model[0]} (use a name as a tap; task outputs are taps too: @logits)"
    else:
        if model:
            raise DistillError(
                f"distill list {what} takes no more arguments, got {' '.join(model)!r}; "
                "only distill list taps MODEL takes a model"
            )
        rows, title = api.catalogue(what), what
    print_rows(rows, title)


def _key_values(items: list[str]) -> dict[str, Any]:
    """``key=value`` words as a dict, each value read as YAML (``channels=[8,16]``, ``pretrained=false``)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DistillError(f"model option {item!r} is not key=value; e.g. channels=[8,16]")
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise DistillError(
                f"model option {item!r}: the value is not valid YAML; quote it, e.g. {key}='...'"
            ) from None
    return options


def print_rows(rows: list[dict[str, Any]], title: str) -> None:
    """A rich table on a terminal; elsewhere (a pipe, a file) tab-separated lines with a header, whole:
    a table drawn for 80 columns would cut and wrap the cells."""
    if not (console.is_terminal or console.is_jupyter):
        if rows:
            typer.echo("\t".join(rows[0]))
        for row in rows:
            typer.echo("\t".join(" ".join(str(v).split()) for v in row.values()))
        return
    table = Table(title=title)
    for row in rows:
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
