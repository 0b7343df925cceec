"""Reusing trained runs: recipes are compared by meaning, so a release that adds a setting (at a default
that keeps the old behaviour) reuses cached teachers, and a changed value still retrains."""

import io

import pytest
from rich.console import Console

from distill.compare import runs
from distill.compare.runs import cached_run, finished, recipe_key, same_recipe
from distill.config.load import load_recipe, recipe_to_yaml

RECIPE = "fashion_mnist/teacher"


def saved_run(folder, recipe, edit=lambda text: text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(edit(recipe_to_yaml(recipe)), encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "summary.json").write_text("{}")
    return folder


def older_release(text: str) -> str:
    """The file an older distill wrote: no ``warmup_bias_lr`` (then not a setting) and no ``ema``."""
    lines = text.splitlines(keepends=True)
    kept = [ln for ln in lines if ln.strip() not in ("warmup_bias_lr: null", "ema: null")]
    assert len(kept) == len(lines) - 2  # the edit did something
    return "".join(kept)


def test_key_ignores_the_output_folder_and_settings_at_their_defaults():
    recipe = load_recipe(RECIPE)
    assert recipe_key(recipe) == recipe_key(load_recipe(RECIPE, ["output=/elsewhere"]))
    assert recipe_key(recipe) == recipe_key(load_recipe(RECIPE, ["train.ema_tau=2000"]))
    assert recipe_key(recipe) != recipe_key(load_recipe(RECIPE, ["train.lr=0.01"]))
    assert recipe_key(recipe) != recipe_key(load_recipe(RECIPE, ["train.ema=0.999"]))


def test_same_recipe_compares_meaning_not_text(tmp_path):
    recipe = load_recipe(RECIPE, [f"output={tmp_path / 'run'}"])
    assert same_recipe(saved_run(tmp_path / "a", recipe), recipe)  # output folder aside
    assert same_recipe(saved_run(tmp_path / "b", recipe, older_release), recipe)
    changed = load_recipe(RECIPE, ["train.lr=0.01"])
    assert not same_recipe(saved_run(tmp_path / "c", changed), recipe)
    newer = saved_run(
        tmp_path / "d", recipe, lambda t: t.replace("train:\n", "train:\n  future: 1\n")
    )
    assert not same_recipe(newer, recipe)  # a setting this release does not know
    assert not same_recipe(tmp_path / "missing", recipe)
    assert not finished(tmp_path / "missing", recipe)


@pytest.fixture
def trained(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(runs.api, "train", lambda recipe, **kw: calls.append(recipe.output))
    return calls


def test_cached_run_reuses_an_older_release_run_and_retrains_a_changed_one(tmp_path, trained):
    console = Console(file=io.StringIO())
    recipe = load_recipe(RECIPE)
    folder = runs.cache_dir() / f"{recipe.name}-{recipe_key(recipe)}"
    saved_run(folder, load_recipe(RECIPE, [f"output={folder}"]), older_release)
    assert cached_run(RECIPE, [], fresh=False, console=console) == folder
    assert trained == []
    assert cached_run(RECIPE, [], fresh=True, console=console) == folder  # --fresh retrains
    assert trained == [str(folder)]
    # same key, but saved when a default differed (the file holds the old value): retrained
    saved_run(folder, load_recipe(RECIPE, ["train.ema_tau=10", f"output={folder}"]))
    cached_run(RECIPE, [], fresh=False, console=console)
    assert trained == [str(folder)] * 2
