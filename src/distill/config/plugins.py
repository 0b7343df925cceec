"""User code in recipes: the modules under ``plugins:`` are imported (from the current directory and the
recipe's folder as well as ``sys.path``), and a model or dataset may be named by import path,
``my_module:build_student``, when ``my_module`` is one of them. Such a name is registered under itself
in the models or datasets registry, so it then works everywhere a registered name does."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from distill.data import DATASETS
from distill.errors import did_you_mean
from distill.models import ADAPTERS, MODELS
from distill.registry import Registry


def make_importable(folders: Iterable[str | os.PathLike[str]]) -> None:
    """Append ``folders`` to ``sys.path`` (after the installed packages, so they never shadow one)."""
    for folder in folders:
        path = os.path.abspath(folder)
        if path not in (os.path.abspath(p or ".") for p in sys.path):
            sys.path.append(path)


def plugin_folders(source: str | os.PathLike[str] | None = None) -> list[str]:
    """Where plugin modules are found besides ``sys.path``: the current directory, the recipe's folder."""
    folders = [os.getcwd()]
    if source is not None:
        folders.append(str(Path(source).resolve().parent))
    return folders


def import_path(name: Any) -> tuple[str, str] | None:
    """``(module, function)`` for a ``module:function`` name, ``None`` for any other name (a registered
    name or a model adapter such as ``torchvision:resnet18``)."""
    if not isinstance(name, str) or ":" not in name:
        return None
    module, _, attr = name.partition(":")
    return None if module in ADAPTERS else (module, attr)


def register_import_paths(data: Any) -> None:
    """Register each ``module:function`` named by a raw recipe's ``student``, ``teacher`` or ``data``
    under that name, after checking that ``module`` is listed under ``plugins:`` (and importing it)."""
    if not isinstance(data, dict):
        return
    plugins = data.get("plugins") or []
    plugins = [p for p in plugins if isinstance(p, str)] if isinstance(plugins, list) else []
    for key, registry in (("student", MODELS), ("teacher", MODELS), ("data", DATASETS)):
        section = data.get(key)
        name = section.get("name") if isinstance(section, dict) else None
        if import_path(name) is not None and name not in registry:
            _register(f"{key}.name", name, plugins, registry)


def _register(where: str, name: str, plugins: list[str], registry: Registry) -> None:
    module, attr = import_path(name) or ("", "")
    if module not in plugins:
        hint = did_you_mean(module, ADAPTERS) if registry is MODELS else ""
        raise ValueError(
            f"{where} {name!r}: {module!r} is not listed under plugins:;{hint} add `plugins: "
            f"[{module}]` to load your own code (it is imported only from that list)"
        )
    make_importable(plugin_folders())
    try:
        found = getattr(importlib.import_module(module), attr, None)
    except ImportError as err:
        raise ValueError(
            f"{where} {name!r}: plugin {module!r} cannot be imported ({err}); put {module}.py in the "
            "current directory or the recipe's folder, or add its folder to PYTHONPATH"
        ) from None
    if not callable(found):
        names = [n for n in dir(sys.modules[module]) if not n.startswith("_")]
        raise ValueError(
            f"{where} {name!r}: module {module!r} has no function {attr!r}.{did_you_mean(attr, names)} "
            f"Name a {'model factory' if registry is MODELS else 'dataset factory'} defined there"
        )
    registry.add(name, found, description=f"{attr} from plugin {module}")
