"""Recipe-level entry points. Every CLI command calls one of these."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from distill.config.build import build, make_trainer
from distill.config.load import load_recipe, recipe_to_yaml
from distill.config.schema import Recipe
from distill.errors import DistillError, did_you_mean
from distill.train.checkpoint import load_student_weights
from distill.train.distributed import barrier

CHECKPOINTS = ("best", "last")


def _as_recipe(recipe: Recipe | str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    if isinstance(recipe, Recipe):
        if overrides:
            raise DistillError(
                "overrides apply to recipe files; edit the Recipe object directly instead"
            )
        return recipe
    return load_recipe(recipe, overrides)


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to train over a run that has checkpoints unless asked to resume or overwrite; make the folder."""
    try:  # a name over the file system's limit fails already here (ENAMETOOLONG)
        has_checkpoints = (run_dir / "checkpoints").is_dir() and any(
            (run_dir / "checkpoints").iterdir()
        )
        if has_checkpoints and not (resume or overwrite):
            raise DistillError(
                f"run directory {run_dir} already holds checkpoints; pass --resume to continue it, "
                "--overwrite to start over, or set output=... to another folder"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DistillError(
            f"cannot create run directory (output, {err.strerror}): {run_dir}; set output=... to "
            "a shorter, writable folder"
        ) from None


def clear_run_dir(run_dir: Path) -> None:
    """Remove an earlier run's artefacts (``--overwrite``), keeping anything else the user put there."""
    import shutil

    for name in (
        "checkpoints",
        "metrics.jsonl",
        "summary.json",
        "tensorboard",
        "model.safetensors",
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
) -> dict[str, Any]:
    """Train what ``recipe`` describes; returns the trainer's summary (``best``, ``last``, ``history``).

    An earlier run in the output folder is kept unless ``resume`` (continue it) or ``overwrite`` (replace it,
    only once the new run's data, models and teacher weights have loaded).
    """
    if resume and overwrite:
        raise DistillError(
            "--resume continues the earlier run and --overwrite replaces it; pass one, not both"
        )
    recipe = _as_recipe(recipe, overrides)
    run_dir = Path(recipe.run_dir)
    check_run_dir(run_dir, resume, overwrite)
    built = build(recipe)
    trainer = make_trainer(built, run_dir, console=console)
    trainer.prepare()  # projectors, loss parts and tap shapes: fail here, before an old run is cleared
    if trainer.dist.is_main:
        if overwrite and not resume:
            clear_run_dir(run_dir)
        (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe), encoding="utf-8")
    barrier(trainer.dist)
    summary = trainer.fit(resume=resume)
    summary["run_dir"] = str(run_dir)
    return summary


def run_recipe(run_dir: str | Path) -> Recipe:
    path = Path(run_dir) / "recipe.yaml"
    if not path.is_file():
        raise DistillError(
            f"{run_dir} is not a distill run directory (no recipe.yaml); give the folder `distill train` wrote"
        )
    return load_recipe(path)


def evaluate(run_dir: str | Path, checkpoint: str = "best") -> dict[str, float]:
    """Evaluate a trained run's student on its recipe's test split (agreement against its teacher, if any)."""
    if checkpoint not in CHECKPOINTS:
        raise DistillError(
            f"unknown checkpoint {checkpoint!r}.{did_you_mean(checkpoint, CHECKPOINTS)} "
            "Use best or last"
        )
    recipe = run_recipe(run_dir)
    built = build(recipe)
    load_student_weights(Path(run_dir), built.student, checkpoint)
    loader = (
        built.test_data.loader(recipe.train.eval_batch_size)
        if hasattr(built.test_data, "loader")
        else built.test_data
    )
    return built.distiller.task.evaluate(built.student, loader, built.teacher)


def validate(paths: list[str | Path]) -> list[Recipe | None]:
    """Load and validate each recipe (no training, no data loading).

    Files named ``_*.yaml`` are include fragments (``defaults:`` targets): they are parsed, not validated
    as whole recipes, and give ``None``.
    """
    from distill.config.load import load_raw

    results: list[Recipe | None] = []
    for path in paths:
        if Path(path).name.startswith("_"):
            load_raw(Path(path))
            results.append(None)
        else:
            results.append(load_recipe(path))
    return results


def resolve(recipe: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """The recipe after ``defaults:`` and overrides, as YAML with every default filled in."""
    return recipe_to_yaml(load_recipe(recipe, overrides))


def catalogue(what: str) -> list[dict[str, Any]]:
    """Rows for ``distill list WHAT``: one dict per registered item (name first, then its metadata)."""
    if what == "recipes":
        from distill.config.load import BUILTIN_RECIPES, shipped_recipes

        rows = []
        for path in shipped_recipes():
            raw = path.read_text().splitlines()
            first = next((line.lstrip("# ").strip() for line in raw if line.startswith("#")), "")
            rows.append(
                {"name": str(path.relative_to(BUILTIN_RECIPES).with_suffix("")), "about": first}
            )
        return rows
    from distill.data import DATASETS
    from distill.losses import LOSSES
    from distill.models import MODELS
    from distill.projectors import PROJECTORS
    from distill.schedules import SCHEDULES
    from distill.tasks import TASKS

    registry = {
        "losses": LOSSES,
        "models": MODELS,
        "datasets": DATASETS,
        "tasks": TASKS,
        "projectors": PROJECTORS,
        "schedules": SCHEDULES,
    }[what]
    metas = {name: registry.meta(name) for name in registry.names()}
    keys = list(dict.fromkeys(k for meta in metas.values() for k in meta))
    if what == "losses":  # the rest of the metadata feeds docs/methods.md and the contract tests
        keys = ["paper", "year", "kind", "consumes"]
    return [{"name": name, **{k: meta.get(k, "") for k in keys}} for name, meta in metas.items()]
