"""Recipe YAML: ``safe_load`` reads JSON-like data only (``1e-3`` is a float, dates stay strings, no tags
beyond plain data) and refuses a key written twice in one mapping, self-referencing aliases, deep nesting,
alias bombs and oversized input (text, items in one list or mapping, values in all); ``to_yaml`` writes
YAML that ``safe_load`` reads back equal."""

from __future__ import annotations

import re
import reprlib
from typing import Any

import yaml

from distill.errors import ConfigError

MAX_DEPTH = 100  # a recipe is ~5 levels deep; this only stops pathological input
MAX_VALUES = 100_000  # values after expanding aliases (a "billion laughs" file expands to 10^9)
# Size caps checked while parsing, so a huge input fails in about a second instead of growing for minutes.
MAX_CHARS = 1 << 20  # characters of one recipe file or one override value (1 MiB)
MAX_ITEMS = 10_000  # items of one list or mapping
MAX_NODES = 100_000  # values (lists, mappings and scalars) written in one document

_YAML_TAG = "tag:yaml.org,2002:"
# Recipes are JSON-like data: no dates, binary, sets or ordered pairs (``2024-01-01`` stays a string).
_NOT_DATA = {f"{_YAML_TAG}{t}" for t in ("timestamp", "binary", "set", "omap", "pairs")}


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` for recipes: reads ``1e-3`` as a float (YAML 1.1 insists on ``1.0e-3``), keeps dates
    and ``=`` as strings, refuses tags beyond plain data, and turns a bad tagged value (``!!int abc``) into a
    :class:`yaml.YAMLError` with its position instead of a bare ``ValueError``. ``source`` names the input in
    the :class:`ConfigError` for a duplicate key or a size cap."""

    source = "<string>"
    _nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        # before the node is read: a 100 MB flow list stops at item MAX_ITEMS, not after parsing
        if parent is not None and len(parent.value) >= MAX_ITEMS:
            kind = "list" if isinstance(parent, yaml.SequenceNode) else "mapping"
            raise ConfigError(
                f"{self.source}: the {kind} at line {parent.start_mark.line + 1} has more than "
                f"{MAX_ITEMS} items; a recipe holds settings, so keep bulk data in a file the dataset reads"
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            line = self.peek_event().start_mark.line + 1
            raise ConfigError(
                f"{self.source}: more than {MAX_NODES} values (at line {line}); a recipe holds settings, "
                "so keep bulk data in a file the dataset reads"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        # a `!!map` tag on a list or scalar: the base class refuses it with its position
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if (
                key_node.tag == f"{_YAML_TAG}merge"
            ):  # keys merged in by `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                earlier = first_line.get(key)
            except TypeError:  # an unhashable key: the base class says so with its position
                continue
            if earlier is not None:
                raise ConfigError(
                    f"{self.source}: key {short_repr(key)} appears twice (lines {earlier} and {line}); "
                    "keep one"
                )
            first_line[key] = line
        return super().construct_mapping(node, deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except ConfigError:  # a duplicate key in a nested mapping, already worded
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as err:
            kind = node.tag.removeprefix(_YAML_TAG)
            what = (
                short_repr(node.value) if isinstance(node, yaml.ScalarNode) else f"this {node.id}"
            )
            reason = f" ({str(err).split(';')[0]})" if isinstance(err, ValueError) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"{what} is not a valid {kind}{reason}", node.start_mark
            ) from None


class _Dumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that quotes strings :class:`_Loader` would read as something else (``"1e3"``)."""


_FLOAT_E = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(f"{_YAML_TAG}float", _FLOAT_E, list("-+0123456789"))
_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp) for tag, regexp in resolvers if tag not in _NOT_DATA | {f"{_YAML_TAG}value"}
    ]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.yaml_constructors = {
    tag: fn for tag, fn in yaml.SafeLoader.yaml_constructors.items() if tag not in _NOT_DATA
}


def _refuse_tag(loader: _Loader, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(
        None,
        None,
        f"tag {short_repr(node.tag)} is not allowed: recipes hold only strings, numbers, true/false, "
        "null, lists and mappings",
        node.start_mark,
    )


_Loader.add_constructor(None, _refuse_tag)

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 80
_repr.maxlevel = 3


def short_repr(value: Any) -> str:
    """``repr`` cut to about 80 characters and 3 levels: safe for huge, deep or self-referencing values."""
    return _repr.repr(value)


def check_tree(data: Any, source: str) -> None:
    """Refuse data that is not a plain tree: an alias that contains itself, nesting deeper than
    :data:`MAX_DEPTH`, or aliases that expand to more than :data:`MAX_VALUES` values."""
    done: dict[int, tuple[int, int]] = {}  # id -> (values, height) of the containers already walked
    active: set[int] = set()
    aliased = False

    def visit(node: Any, depth: int) -> tuple[int, int]:
        nonlocal aliased
        if not isinstance(node, (dict, list, tuple)):
            return 1, 0
        key = id(node)
        if key in active:
            raise ConfigError(
                f"{source}: an alias (*name) refers to a value that contains it; recipes must be trees, "
                "so repeat the value instead"
            )
        if key in done:
            aliased = True
            size, height = done[key]
        elif depth > MAX_DEPTH:
            size, height = 1, 0
        else:
            active.add(key)
            size, height = 1, 0
            for child in node.values() if isinstance(node, dict) else node:
                child_size, child_height = visit(child, depth + 1)
                size, height = size + child_size, max(height, child_height + 1)
            active.discard(key)
            done[key] = size, height
        if depth + height > MAX_DEPTH:
            raise ConfigError(
                f"{source}: values are nested more than {MAX_DEPTH} levels deep; flatten the recipe"
            )
        return size, height

    size, _ = visit(data, 0)
    if aliased and size > MAX_VALUES:
        raise ConfigError(
            f"{source}: aliases expand to more than {MAX_VALUES} values; write the values out instead"
        )


def safe_load(text: str, source: str = "<string>") -> Any:
    """Parse YAML into plain data (see :class:`_Loader`). ``yaml.YAMLError`` for bad YAML, :class:`ConfigError`
    naming ``source`` for duplicate keys, nesting, self-referencing aliases, alias bombs or input past the
    size caps (:data:`MAX_CHARS`, :data:`MAX_ITEMS`, :data:`MAX_NODES`)."""
    if len(text) > MAX_CHARS:
        raise ConfigError(
            f"{source}: {len(text):,} characters, more than the {MAX_CHARS:,} a recipe may hold; a recipe "
            "holds settings, so keep bulk data in a file the dataset reads"
        )
    loader = _Loader(text)
    loader.source = source
    try:
        data = loader.get_single_data()
    except RecursionError:
        raise ConfigError(
            f"{source}: values are nested more than {MAX_DEPTH} levels deep; flatten the recipe"
        ) from None
    finally:
        loader.dispose()
    check_tree(data, source)
    return data


def to_yaml(data: Any, **options: Any) -> str:
    """Plain data as YAML that :func:`safe_load` reads back equal (strings like ``1e3`` come out quoted);
    ``options`` go to ``yaml.dump``."""
    return yaml.dump(data, Dumper=_Dumper, **{"sort_keys": False, **options})
