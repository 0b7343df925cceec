"""Load a recipe: ``safe_yaml.safe_load`` -> ``defaults:`` includes -> ``key=value`` overrides -> plugins
-> schema.

Errors are :class:`ConfigError` with one line that names the file, the key and the fix.
"""

from __future__ import annotations

import importlib
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from distill.config.plugins import make_importable
from distill.config.safe_yaml import MAX_CHARS, safe_load, short_repr, to_yaml
from distill.config.schema import Recipe
from distill.errors import ConfigError, DistillError, did_you_mean, first_line

BUILTIN_RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def show_path(path: str | Path) -> str:
    """A path for a one-line message: quoted when it holds newlines or other unprintables, cut when huge."""
    text = str(path)
    if len(text) > 200:
        text = f"{text[:100]}...{text[-97:]}"
    return text if text.isprintable() else repr(text)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shipped_recipes() -> list[Path]:
    """Shipped recipe files; ``_``-prefixed files are include-only fragments."""
    return sorted(p for p in BUILTIN_RECIPES.rglob("*.yaml") if not p.name.startswith("_"))


def recipe_training(run: str | Path) -> str | None:
    """The shipped recipe whose ``name:`` is the folder ``run`` (or the folder holding the file ``run``),
    as ``distill train`` names it (``fashion_mnist/teacher_strong``); None when no shipped recipe is."""
    path = Path(run)
    names = {path.name, path.parent.name} - {"", ".", "runs"}
    for recipe in shipped_recipes():
        found = re.search(r"^name:\s*([^\s#]+)", recipe.read_text(encoding="utf-8"), re.MULTILINE)
        if found and found.group(1).strip("'\"") in names:
            return str(recipe.relative_to(BUILTIN_RECIPES).with_suffix(""))
    return None


def weights_not_found(weights: str, role: str) -> ConfigError:
    """The one-line error for ``role`` weights that are not there, naming the shipped recipe that makes
    them when there is one."""
    recipe = recipe_training(weights)
    how = f"distill train {recipe}" if recipe else "distill train ..."
    return ConfigError(
        f"{role} weights {weights!r} not found; train it first ({how}) or fix the path"
    )


def _is_file(path: Path) -> bool:
    """``path.is_file()`` that answers ``False`` for names the OS refuses (too long, NUL bytes)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def find_recipe(path: str | Path) -> Path:
    """A path, or the name of a shipped recipe (``fashion_mnist/kd``)."""
    p = Path(path)
    if _is_file(p):
        return p
    stem = p.with_suffix("") if p.name else p
    for candidate in (BUILTIN_RECIPES / p, BUILTIN_RECIPES / f"{stem}.yaml"):
        if _is_file(candidate):
            return candidate
    shipped = [str(r.relative_to(BUILTIN_RECIPES).with_suffix("")) for r in shipped_recipes()]
    hint = did_you_mean(str(stem), shipped)
    raise ConfigError(
        f"recipe {short_repr(str(path))} not found.{hint} Give a YAML path or a shipped recipe name "
        "(`distill list recipes`)"
    )


def read_yaml(path: Path) -> dict[str, Any]:
    where = show_path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CHARS:  # before reading: a recipe holds settings, never megabytes
            raise ConfigError(
                f"{where}: {size:,} bytes, more than the {MAX_CHARS:,} a recipe may hold; a recipe holds "
                "settings, so keep bulk data in a file the dataset reads"
            )
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read recipe {where}: {err.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{where}: not UTF-8 text (byte {err.start} is {raw[err.start]:#04x}); save the recipe as UTF-8"
        ) from None
    try:
        data = safe_load(text, where)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or first_line(err)
        kind = (
            "YAML error"
            if isinstance(err, yaml.constructor.ConstructorError)
            else "YAML syntax error"
        )
        raise ConfigError(f"{where}:{at}: {kind}: {_one_line(problem)}; fix the YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: a recipe must be a YAML mapping (key: value), got {type(data).__name__}"
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
    try:
        path = path.resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (Python < 3.13)
        raise ConfigError(f"cannot resolve recipe path {show_path(path)}: {err}") from None
    if path in _seen:
        chain = " -> ".join(show_path(p) for p in (*_seen, path))
        raise ConfigError(f"{show_path(path)}: 'defaults' include cycle: {chain}")
    data = read_yaml(path)
    includes = data.pop("defaults", None)
    if includes is None:
        includes = []
    elif isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) and i for i in includes):
        raise ConfigError(
            f"{show_path(path)}: 'defaults' must be a list of recipe paths, got {short_repr(includes)}"
        )
    merged: dict[str, Any] = {}
    for include in includes:
        target = path.parent / include
        if not _is_file(target):
            raise ConfigError(
                f"{show_path(path)}: 'defaults' entry {short_repr(include)} not found "
                f"(looked at {show_path(target)})"
            )
        merged = deep_merge(merged, load_raw(target, (*_seen, path)))
    return deep_merge(merged, data)


_INDEX = re.compile(r"[0-9]{1,9}")


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``"train.lr=0.1"`` -> ``(["train", "lr"], 0.1)``; values are parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(
            f"override {short_repr(text)} must look like key=value, e.g. train.epochs=5"
        )
    key, _, raw = text.partition("=")
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(
            f"override {short_repr(text)} has an empty key part; write dotted keys like train.lr=0.1"
        )
    try:
        value = safe_load(raw, f"override {short_repr(text)}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not valid YAML: keep the text as a string
    return [int(p) if _INDEX.fullmatch(p) else p for p in parts], value


def apply_override(data: dict[str, Any], text: str) -> dict[str, Any]:
    path, value = parse_override(text)
    shown = short_repr(text)
    node: Any = data
    for i, part in enumerate(path[:-1]):
        nxt = path[i + 1]
        where = ".".join(_loc_part(p) for p in path[:i]) or "the top level"
        if isinstance(part, int):
            if not isinstance(node, list) or not -len(node) <= part < len(node):
                raise ConfigError(f"override {shown}: index {part} is out of range at {where}")
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {shown}: {where} is not a mapping")
        if node.get(part) is None:
            node[part] = [] if isinstance(nxt, int) else {}
        node = node[part]
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or not -len(node) <= last < len(node):
            raise ConfigError(f"override {shown}: index {last} is out of range")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(
            f"override {shown}: cannot set {short_repr(last)} inside a {type(node).__name__}"
        )
    return data


def import_plugins(plugins: Any, source: str, folder: str | Path | None = None) -> None:
    """Import the modules listed under ``plugins:``: the only way a recipe loads user code. They are
    found on ``sys.path``, in the current directory and in ``folder`` (the recipe's)."""
    if plugins in (None, []):
        return
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(
            f"{source}: 'plugins' must be a list of importable module names, got {short_repr(plugins)}"
        )
    for module in plugins:
        if not all(part.isidentifier() for part in module.split(".")):
            raise ConfigError(
                f"{source}: plugin {short_repr(module)} is not a module name; "
                "write dotted Python names like my_pkg.losses"
            )
        make_importable([os.getcwd(), *([folder] if folder is not None else [])])
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(
                f"{source}: plugin {short_repr(module)} cannot be imported ({_one_line(str(err))}); "
                "put it in the current directory or the recipe's folder, or add its folder to PYTHONPATH"
            ) from None


def _loc_part(part: Any) -> str:
    text = str(part)
    return (
        text
        if text.isprintable() and len(text) <= 80 and text.strip() == text
        else short_repr(part)
    )


def format_validation_error(err: ValidationError, source: str) -> str:
    """First pydantic error as one line: ``file: key.path: problem``, with did-you-mean for unknown keys."""
    first = err.errors()[0]
    loc = ".".join(_loc_part(p) for p in first["loc"] if not str(p).startswith("function-after"))
    msg = _one_line(first["msg"].removeprefix("Value error, "), limit=1000)
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
        msg = f"{msg} (got {short_repr(first['input'])})"
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
    import_plugins(data.get("plugins"), show_path(source), Path(source).resolve().parent)
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, show_path(source))) from None
    except DistillError as err:  # registry misses raised inside validators
        raise ConfigError(f"{show_path(source)}: {_one_line(str(err), limit=1000)}") from None


def recipe_to_yaml(recipe: Recipe) -> str:
    """The recipe as YAML that :func:`load_recipe` reads back to an equal recipe."""
    as_json = recipe.model_dump(mode="json", exclude_none=False)
    return to_yaml(_non_finite_back(as_json, recipe.model_dump(mode="python", exclude_none=False)))


def _non_finite_back(as_json: Any, as_python: Any) -> Any:
    """JSON mode writes ``inf``/``nan`` as null, which loads back as a different recipe: restore them."""
    if isinstance(as_python, float) and not math.isfinite(as_python):
        return as_python
    if isinstance(as_json, dict) and isinstance(as_python, dict):
        return {k: _non_finite_back(v, as_python.get(k)) for k, v in as_json.items()}
    if isinstance(as_json, list) and isinstance(as_python, (list, tuple)):
        if len(as_json) == len(as_python):
            return [_non_finite_back(j, p) for j, p in zip(as_json, as_python, strict=True)]
    return as_json
