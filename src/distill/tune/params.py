"""A study's values: the ``tune:`` section of a recipe, the overrides that make a trial's recipe, the
check that every bound and choice makes a valid recipe, and Optuna's suggestion of each value."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distill.config.load import load_recipe
from distill.config.schema import Recipe, TuneParam, TuneSpec
from distill.errors import ConfigError


def tune_spec(recipe: Recipe, where: str) -> TuneSpec:
    if recipe.tune is None:
        raise ConfigError(
            f"{where} has no 'tune:' section; add one with params (path and low/high or choices), "
            "e.g. tune: {params: [{path: train.lr, low: 0.01, high: 0.5, log: true}]}"
        )
    return recipe.tune


def yaml_value(value: Any) -> str:
    """``value`` as the right-hand side of a ``key=value`` override."""
    return json.dumps(value) if not isinstance(value, str) else value


def trial_overrides(spec: TuneSpec, values: Mapping[str, Any]) -> list[str]:
    """What turns the recipe into one trial's: the trial overrides, the values, the validation split."""
    return [
        *spec.overrides,
        *(f"{path}={yaml_value(v)}" for path, v in values.items()),
        f"data.validation={spec.validation}",
    ]


def check_paths(recipe: str | Path, overrides: Sequence[str], spec: TuneSpec) -> None:
    """Every bound and choice of every parameter makes a valid trial recipe: a wrong path or a value
    the recipe refuses is a one-line error before any trial runs."""
    for i, param in enumerate(spec.params):
        for value in _probe_values(param):
            try:
                load_recipe(recipe, [*overrides, *trial_overrides(spec, {param.path: value})])
            except ConfigError as err:
                raise ConfigError(
                    f"tune.params.{i} (path {param.path}, value {value!r}) makes a bad recipe: {err}"
                ) from None
            if not _path_exists(recipe, overrides, param.path):
                raise ConfigError(
                    f"tune.params.{i}: path {param.path!r} is not a value of the recipe (it would add a "
                    "new key); name an existing one, e.g. distill.terms.0.options.temperature"
                )


def _path_exists(recipe: str | Path, overrides: Sequence[str], path: str) -> bool:
    """``path`` names a value the resolved recipe has (a default counts), so a typo is not a new key."""
    node: Any = load_recipe(recipe, overrides).model_dump(mode="json")
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def _probe_values(param: TuneParam) -> list[Any]:
    if param.choices is not None:
        return list(param.choices)
    assert param.low is not None and param.high is not None
    if param.integer:
        return [math.ceil(param.low), math.floor(param.high)]
    return [param.low, param.high]


def suggest(trial: Any, param: TuneParam) -> Any:
    """The trial's value of ``param`` (Optuna's suggest calls; the path is the parameter's name)."""
    if param.choices is not None:
        return trial.suggest_categorical(param.path, param.choices)
    assert param.low is not None and param.high is not None
    if param.integer:
        return trial.suggest_int(
            param.path, math.ceil(param.low), math.floor(param.high), log=param.log
        )
    return trial.suggest_float(param.path, param.low, param.high, log=param.log)
