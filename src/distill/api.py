"""Recipe-level entry points. Every CLI command calls one of these."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from distill.config.build import (
    build,
    make_trainer,
    resolve_device,
    resolved_recipe,
    slow_batchnorm_warning,
)
from distill.config.load import (
    BUILTIN_RECIPES,
    load_raw,
    load_recipe,
    recipe_to_yaml,
    shipped_recipes,
)
from distill.config.resume import check_resume
from distill.config.run import CHECKPOINTS as CHECKPOINTS  # re-exported: export_run reads it here
from distill.config.run import Run as Run
from distill.config.run import open_run
from distill.config.run import run_recipe as run_recipe
from distill.config.schema import Recipe
from distill.data import DATASETS
from distill.errors import DistillError, TrainingInterrupted
from distill.handback import FORMATS as HANDBACK_FORMATS
from distill.handback import REPORT_NAME as HANDBACK_REPORT
from distill.handback import handback_run as handback_run
from distill.io import write_text
from distill.losses import LOSSES
from distill.models import ADAPTER_ROWS, MODELS, build_model
from distill.projectors import PROJECTORS
from distill.runreport import (
    CURVES,
    MODEL_CARD,
    data_facts,
    model_card,
    per_class_accuracy,
    plot_curves,
    write_eval,
    write_model_card,
)
from distill.schedules import SCHEDULES
from distill.tasks import TASKS
from distill.train.callbacks import CALLBACKS, Callback
from distill.train.checkpoint import CheckpointStore
from distill.train.distributed import barrier
from distill.train.rundir import RunStart, check_not_foreign, has_last_checkpoint


def _as_recipe(recipe: Recipe | str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    if isinstance(recipe, Recipe):
        if overrides:
            raise DistillError(
                "overrides apply to recipe files; edit the Recipe object directly instead"
            )
        return recipe
    return load_recipe(recipe, overrides)


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to train over a run that has checkpoints unless asked to resume or overwrite.

    Writes nothing: :class:`~distill.train.rundir.RunStart` creates the folder once it can be written.
    """
    try:  # a name over the file system's limit fails already here (ENAMETOOLONG)
        has_checkpoints = (run_dir / "checkpoints").is_dir() and any(
            (run_dir / "checkpoints").iterdir()
        )
    except OSError as err:
        raise DistillError(
            f"cannot create run directory (output, {err.strerror}): {run_dir}; set output=... to "
            "a shorter, writable folder"
        ) from None
    if has_checkpoints and not (resume or overwrite):
        raise DistillError(
            f"run directory {run_dir} already holds checkpoints; pass --resume to continue it, "
            "--overwrite to start over, or set output=... to another folder"
        )


def clear_run_dir(run_dir: Path) -> None:
    """Remove an earlier run's artefacts (``--overwrite``), keeping anything else the user put there."""
    import shutil

    for name in (
        "checkpoints",
        "metrics.jsonl",
        "metrics.csv",
        "summary.json",
        "tensorboard",
        "model.safetensors",
        CURVES,
        MODEL_CARD,
        "eval.json",
        "confusion.png",
        # hand-back folders (export.handback), only those distill wrote
        *(f for f in HANDBACK_FORMATS[1:] if (run_dir / f / HANDBACK_REPORT).is_file()),
    ):
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def train(
    recipe: Recipe | str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train what ``recipe`` describes; returns the trainer's summary (``best``, ``last``, ``history``).
    ``callbacks`` join the recipe's ``train.callbacks`` (:mod:`distill.train.callbacks`).

    An earlier run in the output folder is kept unless ``resume`` (continue it) or ``overwrite`` (replace
    it). The folder is locked for the whole training (another training there is refused), and a replaced
    run is only moved aside until the new run's first checkpoint: a start that fails or is interrupted
    before it leaves the folder as it was (see :mod:`distill.train.rundir`). SIGINT/SIGTERM stop at a
    step boundary with ``last`` saved and raise :class:`~distill.errors.TrainingInterrupted`.
    """
    if resume and overwrite:
        raise DistillError(
            "--resume continues the earlier run and --overwrite replaces it; pass one, not both"
        )
    recipe = _as_recipe(recipe, overrides)
    run_dir = Path(recipe.run_dir)
    if resume:  # a run is there and the recipe still describes it, before anything is written
        check_resume(run_dir, recipe)
    start = RunStart(run_dir, resume=resume, main=os.environ.get("RANK", "0") == "0")
    try:
        with _sigterm_interrupts():
            summary = _train_locked(recipe, start, overwrite, console, callbacks)
    except (KeyboardInterrupt, TrainingInterrupted) as err:
        signum = getattr(err, "signum", signal.SIGINT)
        # an earlier run put back by --overwrite is not this run's checkpoint
        step = _last_step(run_dir) if start.committed or resume else None
        raise TrainingInterrupted(signum, step) from None
    summary["run_dir"] = str(run_dir)
    return summary


def _train_locked(
    recipe: Recipe,
    start: RunStart,
    overwrite: bool,
    console: Console | None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """:func:`train` inside the run folder's lock and undoable start."""
    run_dir, resume = start.run_dir, start.resume
    with start:
        for note in start.notes:
            (console or Console()).print(f"[yellow]note[/]: {note}", soft_wrap=True)
        check_run_dir(run_dir, resume, overwrite)
        if start.main:
            check_not_foreign(run_dir, start.lock.new_file)
        # a resumed run's checkpoint replaces the student's starting weights: they need not exist
        built = build(recipe, student_weights=not (resume and has_last_checkpoint(run_dir)))
        trainer = make_trainer(built, run_dir, console=console, callbacks=callbacks)
        if trainer.dist.is_main:
            for line in built.pairing:
                trainer.console.print(f"auto pairing: {escape(line)}", soft_wrap=True)
            for line in built.notes:
                trainer.console.print(f"[yellow]note[/]: {escape(line)}", soft_wrap=True)
        warning = slow_batchnorm_warning(built)
        if warning and trainer.dist.is_main:
            trainer.console.print(f"[yellow]warning[/]: {escape(warning)}", soft_wrap=True)
        trainer.prepare()  # projectors, loss parts and tap shapes: fail here, before an old run moves
        if trainer.dist.is_main:
            start.begin()
            write_text(run_dir / "recipe.yaml", recipe_to_yaml(recipe))
        barrier(trainer.dist)
        trainer.after_checkpoint.append(start.commit)
        summary = trainer.fit(resume=resume)
        if trainer.dist.is_main:
            _write_run_report(run_dir, recipe, built, summary, trainer, console)
            if recipe.export.handback:
                summary["handback"] = handback_run(run_dir)["folder"]
        return summary


def _write_run_report(
    run_dir: Path, recipe: Recipe, built: Any, summary: dict[str, Any], trainer: Any, console: Any
) -> None:
    """``curves.png`` and ``MODEL_CARD.md`` for the finished run; a folder that refuses them is a warning
    (the run itself is saved)."""
    side = trainer.distiller.student_side  # the term labels metrics.jsonl logs (also under DDP)
    names = list(
        getattr(side, "names", None) or getattr(getattr(side, "module", None), "names", [])
    )
    try:
        plot_curves(run_dir, ["loss", "task", *names], trainer.task.primary_metric)
        card = model_card(recipe, summary, data_facts(built.train_data, built.test_data), names)
        write_model_card(run_dir, card)
    except (OSError, DistillError) as err:
        message = f"could not write {CURVES} / {MODEL_CARD} into {run_dir}: {err}"
        (console or Console()).print(f"[yellow]warning[/]: {escape(message)}", soft_wrap=True)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises :class:`TrainingInterrupted` (as Ctrl-C raises KeyboardInterrupt), so a start stopped
    before the training loop undoes itself too; main thread only, the previous handler is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise TrainingInterrupted(signum, None)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _last_step(run_dir: Path) -> int | None:
    """The step of ``run_dir``'s newest ``last`` checkpoint, or None."""
    try:
        entries = CheckpointStore(run_dir / "checkpoints").entries("last")
    except DistillError:
        return None
    steps = [e["step"] for e in entries if isinstance(e.get("step"), int)]
    return max(steps) if steps else None


class Metrics(dict[str, float]):
    """Evaluation metrics by name; ``notes`` says what was left out and why (e.g. agreement without the
    teacher's weights)."""

    def __init__(self, values: dict[str, float], notes: list[str] | None = None) -> None:
        super().__init__(values)
        self.notes = list(notes or [])
        # classification: counts (rows true, columns predicted), class names, accuracy (%) per class
        self.confusion: list[list[int]] | None = None
        self.classes: list[str] = []
        self.per_class: list[float] = []


def evaluate(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu") -> Metrics:
    """Evaluate a trained run's student on its recipe's test split, with agreement against its teacher when
    the recipe has one and its weights are still there (otherwise ``notes`` says agreement was left out).

    ``device``: where the models run (``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``, checked like
    ``train.device``). Writes ``eval.json`` into ``run_dir`` and, for class-logit tasks, ``confusion.png``
    (the metrics' ``confusion``, ``classes`` and ``per_class`` hold the same); a folder that refuses them
    adds a note."""
    chosen = resolve_device(device, "--device")
    run = open_run(run_dir, checkpoint, teacher=True)
    student = run.student.to(chosen)
    teacher = run.teacher.to(chosen) if run.teacher is not None else None
    values = run.task.evaluate(student, run.test_loader(), teacher, chosen)
    confusion = getattr(run.task, "last_confusion", None)  # class-logit tasks keep it
    metrics = Metrics(values, run.notes)
    if confusion is not None:
        metrics.confusion = confusion.tolist()
        names = getattr(run.test_data, "classes", None) or []
        metrics.classes = [str(c) for c in names][: len(metrics.confusion)]
        metrics.classes += [str(i) for i in range(len(metrics.classes), len(metrics.confusion))]
        metrics.per_class = per_class_accuracy(metrics.confusion)
    try:
        write_eval(run_dir, checkpoint, values, run.notes, metrics.confusion, metrics.classes)
    except OSError as err:
        metrics.notes.append(f"eval.json/confusion.png not written ({err.strerror}): {run_dir}")
    return metrics


def validate(paths: list[str | Path]) -> list[Recipe | None]:
    """Load and validate each recipe (no training, no data loading).

    Files named ``_*.yaml`` are include fragments (``defaults:`` targets): they are parsed, not validated
    as whole recipes, and give ``None``.
    """
    results: list[Recipe | None] = []
    for path in paths:
        if Path(path).name.startswith("_"):
            load_raw(Path(path))
            results.append(None)
        else:
            results.append(load_recipe(path))
    return results


def resolve(recipe: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """The recipe after ``defaults:`` and overrides, as YAML with every default filled in; ``auto``
    taps are shown resolved (the models are built, without weights, and run on one example batch),
    each with a comment line saying what was paired."""
    resolved, pairing = resolved_recipe(load_recipe(recipe, overrides))
    notes = "".join(f"# auto pairing: {line}\n" for line in pairing)
    return notes + recipe_to_yaml(resolved)


def catalogue(what: str) -> list[dict[str, Any]]:
    """Rows for ``distill list WHAT``: one dict per registered item (name first, then its metadata)."""
    if what == "recipes":
        rows = []
        for path in shipped_recipes():
            raw = path.read_text().splitlines()
            first = next((line.lstrip("# ").strip() for line in raw if line.startswith("#")), "")
            rows.append(
                {"name": str(path.relative_to(BUILTIN_RECIPES).with_suffix("")), "about": first}
            )
        return rows
    registry = {
        "losses": LOSSES,
        "models": MODELS,
        "datasets": DATASETS,
        "tasks": TASKS,
        "projectors": PROJECTORS,
        "schedules": SCHEDULES,
        "callbacks": CALLBACKS,
    }[what]
    metas = {name: registry.meta(name) for name in registry.names()}
    keys = list(dict.fromkeys(k for meta in metas.values() for k in meta))
    if what == "losses":  # the rest of the metadata feeds docs/methods.md and the contract tests
        keys = ["paper", "year", "kind", "consumes"]
    rows = [{"name": name, **{k: meta.get(k, "") for k in keys}} for name, meta in metas.items()]
    if what == "models":  # torchvision:, timm:, hf:, yolo:
        rows += [{"name": row["name"], **{k: row.get(k, "") for k in keys}} for row in ADAPTER_ROWS]
    return rows


def model_modules(
    name: str, options: dict[str, Any] | None = None, num_classes: int = 10, in_channels: int = 3
) -> list[dict[str, Any]]:
    """``distill list taps``: every module of model ``name`` built with ``options`` (random weights, no
    download: adapters get ``pretrained=False``), as ``{"module", "type", "params"}`` rows in
    ``named_modules`` order; a module name is what a term's ``student``/``teacher`` tap takes.

    The model is built on the ``meta`` device when its code allows (no memory, no initialisation time),
    else on the CPU."""
    options = dict(options or {})
    if options.get("pretrained"):
        raise DistillError(
            f"distill list taps builds {name} with random weights; leave out pretrained=true"
        )
    source, sep, _ = name.partition(":")
    if sep and source in ("torchvision", "timm", "hf"):
        options["pretrained"] = False
    try:
        with torch.device("meta"):
            model = build_model(name, num_classes=num_classes, in_channels=in_channels, **options)
    except DistillError:
        raise
    except Exception:  # noqa: BLE001 - code that needs real tensors while building: build it on the CPU
        with torch.random.fork_rng(devices=[]):
            model = build_model(name, num_classes=num_classes, in_channels=in_channels, **options)
    rows = []
    for path, module in model.named_modules():
        if path:  # the root is the model itself, not a tap
            params = sum(p.numel() for p in module.parameters())
            rows.append({"module": path, "type": type(module).__name__, "params": params})
    return rows
