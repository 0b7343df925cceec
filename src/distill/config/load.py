"""Load a recipe: ``yaml.safe_load`` -> ``defaults:`` includes -> ``key=value`` overrides -> plugins -> schema.

Errors are :class:`ConfigError` with one line that names the file, the key and the fix.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from distill.config.schema import Recipe
from distill.errors import ConfigError, DistillError, did_you_mean

BUILTIN_RECIPES = Path(__file__).resolve().parent.parent / "recipes"


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a float (YAML 1.1 insists on ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def shipped_recipes() -> list[Path]:
    """Shipped recipe files; ``_``-prefixed files are include-only fragments."""
    return sorted(p for p in BUILTIN_RECIPES.rglob("*.yaml") if not p.name.startswith("_"))


def find_recipe(path: str | Path) -> Path:
    """A path, or the name of a shipped recipe (``fashion_mnist/kd``)."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (BUILTIN_RECIPES / p, BUILTIN_RECIPES / p.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    shipped = [str(r.relative_to(BUILTIN_RECIPES).with_suffix("")) for r in shipped_recipes()]
    hint = did_you_mean(str(p.with_suffix("")), shipped)
    raise ConfigError(
        f"recipe {str(path)!r} not found.{hint} Give a YAML path or a shipped recipe name (`distill list recipes`)"
    )


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read recipe {path}: {err.strerror}") from None
    try:
        data = safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{where}: YAML syntax error: {problem}; fix the YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a recipe must be a YAML mapping (key: value), got {type(data).__name__}"
        )
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_raw(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe as a dict with its ``defaults:`` (paths relative to the file) merged underneath."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(
            f"{path}: 'defaults' include cycle: {' -> '.join(str(p) for p in (*_seen, path))}"
        )
    data = read_yaml(path)
    includes = data.pop("defaults", []) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: 'defaults' must be a list of recipe paths, got {includes!r}")
    merged: dict[str, Any] = {}
    for include in includes:
        target = path.parent / include
        if not target.is_file():
            raise ConfigError(
                f"{path}: 'defaults' entry {include!r} not found (looked at {target})"
            )
        merged = deep_merge(merged, load_raw(target, (*_seen, path)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``"train.lr=0.1"`` -> ``(["train", "lr"], 0.1)``; values are parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.epochs=5")
    key, _, raw = text.partition("=")
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(
            f"override {text!r} has an empty key part; write dotted keys like train.lr=0.1"
        )
    try:
        value = safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not valid YAML: keep the text as a string
    return [int(p) if p.isdigit() else p for p in parts], value


def apply_override(data: dict[str, Any], text: str) -> dict[str, Any]:
    path, value = parse_override(text)
    node: Any = data
    for i, part in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or not -len(node) <= part < len(node):
                raise ConfigError(
                    f"override {text!r}: index {part} is out of range at {'.'.join(map(str, path[:i]))}"
                )
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {text!r}: {'.'.join(map(str, path[:i]))} is not a mapping")
        if node.get(part) is None:
            node[part] = [] if isinstance(nxt, int) else {}
        node = node[part]
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or not -len(node) <= last < len(node):
            raise ConfigError(f"override {text!r}: index {last} is out of range")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {text!r}: cannot set {last!r} inside a {type(node).__name__}")
    return data


def import_plugins(plugins: Any, source: str) -> None:
    """Import the modules listed under ``plugins:``: the only way a recipe loads user code."""
    if plugins in (None, []):
        return
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(
            f"{source}: 'plugins' must be a list of importable module names, got {plugins!r}"
        )
    for module in plugins:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(
                f"{source}: plugin {module!r} cannot be imported ({err}); check PYTHONPATH"
            ) from None


def format_validation_error(err: ValidationError, source: str) -> str:
    """First pydantic error as one line: ``file: key.path: problem``, with did-you-mean for unknown keys."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-after"))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        parent_fields = _fields_at(first["loc"][:-1])
        hint = did_you_mean(str(first["loc"][-1]), parent_fields)
        msg = (
            f"unknown key.{hint} Allowed here: {', '.join(parent_fields)}"
            if parent_fields
            else "unknown key"
        )
    elif (
        "input" in first
        and first["type"]
        not in ("missing", "value_error")  # our own messages already name the value
        and not isinstance(first["input"], (dict, list))
    ):
        msg = f"{msg} (got {first['input']!r})"
    more = len(err.errors()) - 1
    return f"{source}: {loc or '(top level)'}: {msg}" + (
        f" (+{more} more problems)" if more else ""
    )


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the schema model found by walking ``loc`` from :class:`Recipe`."""
    model: Any = Recipe
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        model = _model_of(field.annotation)
    return list(model.model_fields) if model is not None else []


def _model_of(annotation: Any) -> Any:
    from typing import get_args

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load, merge, override and validate a recipe. Raises :class:`ConfigError` with a one-line message."""
    source = find_recipe(path)
    data = load_raw(source)
    for text in overrides:
        data = apply_override(data, text)
    import_plugins(data.get("plugins"), str(source))
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(source))) from None
    except DistillError as err:  # registry misses raised inside validators
        raise ConfigError(f"{source}: {err}") from None


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=False), sort_keys=False)
