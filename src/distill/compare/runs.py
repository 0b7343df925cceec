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
from distill.config.load import load_recipe, recipe_to_yaml
from distill.config.schema import Recipe

# Settings for a seconds-long smoke run (``distill demo --tiny``, ``distill compare --tiny``).
TINY = ["data.train_subset=1024", "data.test_subset=512", "train.epochs=1", "train.batch_size=128"]


def cache_dir() -> Path:
    """``$DISTILL_CACHE`` or ``~/.cache/distill``: where teachers are kept between demos and comparisons."""
    return Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))


def cached_run(
    recipe: str | Path, overrides: list[str], fresh: bool, console: Console, role: str = "teacher"
) -> Path:
    """Train ``recipe`` once per distinct resolved recipe into the cache; later calls reuse the run.

    The folder is ``<cache>/<recipe name>-<12 hex digits of the resolved recipe's SHA-256>``.
    """
    resolved = load_recipe(recipe, overrides)
    key = hashlib.sha256(recipe_to_yaml(resolved).encode()).hexdigest()[:12]
    run_dir = cache_dir() / f"{resolved.name}-{key}"
    if (
        not fresh
        and (run_dir / "model.safetensors").is_file()
        and (run_dir / "summary.json").is_file()
    ):
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
    """``run_dir`` holds a completed run of exactly ``recipe`` (its saved ``recipe.yaml`` is identical)."""
    saved = run_dir / "recipe.yaml"
    return (
        (run_dir / "model.safetensors").is_file()
        and saved.is_file()
        and saved.read_text(encoding="utf-8") == recipe_to_yaml(recipe)
    )


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
    (run_dir / "compare.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
