"""Trained runs that a comparison reuses: a cached teacher per distinct recipe, and run folders whose
recipe (or pruning settings) match the request."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from distill import api
from distill.config.load import load_recipe
from distill.config.schema import AFTER_TRAINING, Recipe
from distill.errors import DistillError
from distill.io import write_json

# Settings for a seconds-long smoke run (``distill demo --tiny``, ``distill compare --tiny``).
TINY = ["data.train_subset=1024", "data.test_subset=512", "train.epochs=1", "train.batch_size=128"]


def cache_dir() -> Path:
    """``$DISTILL_CACHE`` or ``~/.cache/distill``: where teachers are kept between demos and comparisons."""
    return Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))


def recipe_key(recipe: Recipe) -> str:
    """12 hex digits naming what ``recipe`` trains: a hash of its settings that differ from their defaults
    (the output folder and the sections read after training aside), so a distill release that adds a
    setting keeps every key."""
    meaning = recipe.model_copy(update={"output": None}).model_dump(
        mode="json", exclude_defaults=True, exclude=set(AFTER_TRAINING)
    )
    return hashlib.sha256(json.dumps(meaning, sort_keys=True).encode()).hexdigest()[:12]


def same_recipe(run_dir: Path, recipe: Recipe) -> bool:
    """``run_dir/recipe.yaml`` loads back to ``recipe`` (the output folder and the ``export:``, ``qat:`` and
    ``compare:`` sections aside).

    Compared as recipes, not as text: a run saved by an older distill matches when the settings it lacks
    take their defaults; one saved when a default was different does not (its file holds the old value).
    """
    saved = run_dir / "recipe.yaml"
    if not saved.is_file():
        return False
    try:
        loaded = load_recipe(str(saved))
    except DistillError:  # written by a distill that had settings this one lacks: not the same
        return False
    after = {name: getattr(recipe, name) for name in AFTER_TRAINING}  # not what the run trained
    return loaded.model_copy(update={"output": recipe.output, **after}) == recipe


def cached_run(
    recipe: str | Path, overrides: list[str], fresh: bool, console: Console, role: str = "teacher"
) -> Path:
    """Train ``recipe`` once per distinct resolved recipe into the cache; later calls reuse the run.

    The folder is ``<cache>/<recipe name>-<recipe_key>``; a run there is reused when it finished and its
    saved recipe is the same (:func:`same_recipe`), else retrained.
    """
    resolved = load_recipe(recipe, overrides)
    run_dir = cache_dir() / f"{resolved.name}-{recipe_key(resolved)}"
    if not fresh and finished(run_dir, resolved) and (run_dir / "summary.json").is_file():
        console.print(
            f"[green]{role}[/]: reusing {run_dir} (pass --fresh to retrain)", soft_wrap=True
        )
        return run_dir
    console.rule(role)
    api.train(
        load_recipe(recipe, [*overrides, f"output={run_dir}"]), overwrite=True, console=console
    )
    return run_dir


def finished(run_dir: Path, recipe: Recipe) -> bool:
    """``run_dir`` holds a completed run of ``recipe`` (:func:`same_recipe`)."""
    return (run_dir / "model.safetensors").is_file() and same_recipe(run_dir, recipe)


def train_or_reuse(recipe: Recipe, fresh: bool, console: Console, slug: str) -> Path:
    """Train ``recipe`` into its output folder unless that folder already holds the same finished run."""
    run_dir = Path(recipe.run_dir)
    if not fresh and finished(run_dir, recipe):
        console.print(f"[green]{slug}[/]: reusing {run_dir}", soft_wrap=True)
        return run_dir
    console.rule(slug)
    api.train(recipe, overwrite=True, console=console)
    return run_dir


def settings_match(run_dir: Path, settings: dict[str, Any], artefact: str) -> bool:
    """``run_dir/artefact`` exists and ``run_dir/compare.json`` records exactly ``settings``."""
    path = run_dir / "compare.json"
    if not (run_dir / artefact).is_file() or not path.is_file():
        return False
    try:
        return json.loads(path.read_text()) == settings
    except json.JSONDecodeError:
        return False


def record_settings(run_dir: Path, settings: dict[str, Any]) -> None:
    write_json(run_dir / "compare.json", settings)
