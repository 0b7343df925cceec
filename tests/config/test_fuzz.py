"""Fuzzing the recipe loader and the ``key=value`` override parser with hypothesis.

The property everywhere: any input either loads (a :class:`Recipe`, or plain data for the lower-level
functions) or raises :class:`ConfigError` with a one-line message; never any other exception, and no YAML
tag ever runs code. Every bug the fuzzing found also has an example-based regression test at the bottom,
so it stays fixed even if hypothesis stops generating that input.

Runs are deterministic (``derandomize=True``, no example database). Set ``DISTILL_FUZZ_SCALE=20`` to run
20x more examples locally.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.config.load import (
    apply_override,
    load_raw,
    load_recipe,
    parse_override,
    recipe_to_yaml,
)
from distill.config.safe_yaml import MAX_DEPTH, safe_load, to_yaml
from distill.config.schema import Recipe
from distill.errors import ConfigError
from helpers import shipped_recipes, tiny_recipe_dict

SCALE = int(os.environ.get("DISTILL_FUZZ_SCALE", "1"))
# Writes the test inputs only (the loader under test is distill's own): libyaml is 10x faster.
FAST_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=FAST_DUMPER, sort_keys=False)


def fuzz(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples * SCALE,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz").resolve()


@pytest.fixture(scope="module")
def marker(fuzz_dir: Path) -> Path:
    """A file that exists only if a YAML tag managed to run code."""
    return fuzz_dir / "PWNED"


def expect_recipe_or_config_error(load: Callable[[], Any], *needles: str) -> Recipe | ConfigError:
    """Run ``load``: a Recipe, or a ConfigError whose one-line message holds every needle."""
    try:
        result = load()
    except ConfigError as err:
        assert_one_line(err, *needles)
        return err
    assert isinstance(result, Recipe)
    return result


def assert_one_line(err: ConfigError, *needles: str) -> str:
    message = str(err)
    assert message, "empty error message"
    assert len(message.splitlines()) == 1 and "\n" not in message, f"not one line: {message!r}"
    assert len(message) <= 1500, f"message of {len(message)} characters: {message[:300]!r}..."
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def assert_plain_data(value: Any, depth: int = 0) -> None:
    """Recipes are JSON-like: no dates, bytes, sets or tuples, and never deeper than MAX_DEPTH."""
    assert depth <= MAX_DEPTH + 1
    if isinstance(value, dict):
        for key, item in value.items():
            assert key is None or isinstance(key, (str, int, float, bool)), repr(key)
            assert_plain_data(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            assert_plain_data(item, depth + 1)
    else:
        assert value is None or isinstance(value, (str, int, float, bool)), repr(value)


def assert_round_trips(recipe: Recipe, directory: Path) -> None:
    """``recipe_to_yaml`` (what a run directory's recipe.yaml holds) reads back to the same recipe."""
    text = recipe_to_yaml(recipe)
    path = directory / "resolved.yaml"
    path.write_text(text, encoding="utf-8")
    again = load_recipe(path)
    assert (
        recipe_to_yaml(again) == text
    )  # compares text, not recipes: NaN in options is equal to itself


# ----------------------------------------------------------------------------- YAML-ish text
PAYLOAD_TAGS = [  # every way YAML has to name Python code; {MARKER} is replaced by a real path
    '!!python/object/apply:os.system ["touch {MARKER}"]',
    '!!python/object/apply:builtins.open ["{MARKER}", "w"]',
    '!!python/object/new:builtins.open ["{MARKER}", "w"]',
    "!!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{MARKER}']]",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object:pathlib.Path {}",
    '!<tag:yaml.org,2002:python/object/apply:os.system> ["touch {MARKER}"]',
    '!!python/object/apply:subprocess.call [["touch", "{MARKER}"]]',
]
SCALARS = [
    "1", "0", "-1", "1e3", "1.5e-3", "-1e-9", "1_000", "0x1F", "0o17", "017", "0b101", "1:30:00",
    "1e400", "-1e400", ".nan", ".NaN", ".inf", "-.inf", "9" * 5000, "1" + "0" * 400, "0." + "0" * 400 + "1",
    "2001-13-45", "2001-01-01", "2001-01-01T00:00:00+99:00", "~", "null", "yes", "no", "on", "off",
    "true", "False", "=", "''", '""', "'it''s'", '"\\x41\\u00e9"', '"\\xZZ"', '"\\N\\_\\L\\P"', "é",
    "\u2028", "\x85", "a: b", "cnn", "kd", "fashion_mnist", "linear_warmup", "conv1x1", "sgd",
    "torchvision:resnet18", "@logits", "features.3", "|\n  block\n  text", ">\n  folded",
    "!!int abc", "!!int 1", "!!float x", "!!float 1", "!!bool maybe", "!!bool true", "!!null x",
    "!!str 1", "!!binary AAA=", "!!binary ???", "!!timestamp nope", "!!timestamp 2001-01-01",
    "!!set {a, b}", "!!omap [a: 1]", "!!pairs [a: 1]", "!!seq [1]", "!!map {a: 1}", "!!merge x",
    "!custom x", "!<tag:x> y", "!<%0A> x", "!!python/tuple [1]", *PAYLOAD_TAGS,
    "&a [1, 2]", "*a", "*undefined", "&b {x: *b}", "[", "{", "]", "}", "'unclosed", '"unclosed',
    "[1, [2, [3]]]", "{a: 1, a: 2}", "{? [a]: 1}", "[" * 150 + "]" * 150, "{a: " * 60 + "1" + "}" * 60,
    "\t", "- x", "? x", "%", "@x", "`x", "#comment", "a #comment", "x\x00y", "\ufeff", "\ud7ff",
]  # fmt: skip
KEYS = [
    "name", "description", "task", "task_options", "data", "student", "teacher", "distill", "train",
    "output", "options", "weights", "terms", "loss", "weight", "projector", "schedule", "value",
    "epochs", "lr", "batch_size", "momentum", "train_subset", "augment", "flip", "crop_padding",
    "task_weight", "defaults", "<<", "? [x]", "'quoted'", '"a\\nb"', "1", "null", "~", "-", "? x",
    "", " ", "x" * 300, "é",
]  # fmt: skip
VALID_HEAD = "name: fuzz\nstudent: {name: cnn}\n"


@st.composite
def yamlish_text(draw: st.DrawFn) -> str:
    """Lines of ``key: value`` / ``- item`` with random indentation, anchors, tags and directives."""
    lines = []
    if draw(st.booleans()):
        lines.append(VALID_HEAD.rstrip("\n"))
    if draw(st.integers(0, 9)) == 0:
        lines += [
            draw(st.sampled_from(["%YAML 1.1", "%YAML 1.2", "%TAG !p! tag:yaml.org,2002:python/"])),
            "---",
        ]
    text_scalar = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
    for _ in range(draw(st.integers(0, 10))):
        indent = draw(st.sampled_from(["", "", "  ", "    ", "\t", " "]))
        value = draw(
            st.sampled_from(SCALARS)
            | text_scalar
            | st.sampled_from(["", "!p!object/apply:os.system ['touch {MARKER}']"])
        )
        kind = draw(st.integers(0, 5))
        if kind == 0:
            lines.append(f"{indent}- {value}")
        elif kind == 1:
            lines.append(draw(st.sampled_from(["---", "...", "- - -", ":", "?", "&x", "*x"])))
        else:
            key = draw(st.sampled_from(KEYS) | text_scalar)
            anchor = draw(st.sampled_from(["", "", "", "&a ", "&b ", "<<: "]))
            lines.append(f"{indent}{key}: {anchor}{value}")
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n", "\n\n..."]))


INLINE = [v for v in SCALARS if "\n" not in v]
NAMES = st.sampled_from(["a", "b"])


@st.composite
def yaml_node(draw: st.DrawFn, indent: int = 0, depth: int = 0) -> tuple[str, bool]:
    """``(text, is_block)``: a scalar, flow collection, alias, or an indented block mapping / sequence."""
    if depth == 0:  # a recipe is a mapping; sometimes not, to reach "must be a YAML mapping"
        kind = draw(st.sampled_from([5, 6, 7, 5, 6, 7, 8, 0, 3]))
    else:
        kind = draw(st.integers(0, 9) if depth < 4 else st.integers(0, 4))
    if kind <= 2:
        return draw(st.sampled_from(INLINE)), False
    if kind == 3:
        items = draw(st.lists(st.sampled_from(INLINE), max_size=3))
        return draw(st.sampled_from(["[{}]", "{{x: [{}]}}"])).format(", ".join(items)), False
    if kind == 4:
        return f"*{draw(NAMES)}", False
    pad = " " * indent
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        child, block = draw(yaml_node(indent + 2, depth + 1))
        anchor = draw(st.sampled_from(["", "", "", "&a ", "&b ", "!!map ", "!!seq "]))
        if kind <= 7:
            key = draw(st.sampled_from(KEYS) | st.from_regex(r"[a-z_]{1,8}", fullmatch=True))
            lines.append(
                f"{pad}{key}: {anchor}\n{child}" if block else f"{pad}{key}: {anchor}{child}"
            )
        else:
            lines.append(f"{pad}- {anchor}\n{child}" if block else f"{pad}- {anchor}{child}")
    return "\n".join(lines), True


@st.composite
def yaml_document(draw: st.DrawFn) -> str:
    """Mostly well-formed YAML (nested blocks, flow collections, anchors, aliases, tags), sometimes with
    one character flipped (a tab, a colon, a bracket) to reach every branch of the scanner."""
    body, block = draw(yaml_node())
    text = (VALID_HEAD if draw(st.booleans()) and block and not body.startswith("-") else "") + body
    if draw(st.integers(0, 4)) == 0 and text:
        at = draw(st.integers(0, len(text) - 1))
        text = (
            text[:at]
            + draw(st.sampled_from(["\t", ":", "[", "]", "{", "- ", "&a ", "*b", "#", "'", "\n  "]))
            + text[at:]
        )
    return text + "\n"


def _load_text(directory: Path, content: str | bytes, marker: Path) -> Recipe | ConfigError:
    path = directory / "recipe.yaml"
    if isinstance(content, str):
        path.write_text(content.replace("{MARKER}", str(marker)), encoding="utf-8")
    else:
        path.write_bytes(content)
    outcome = expect_recipe_or_config_error(lambda: load_recipe(path), str(path))
    assert not marker.exists(), "a YAML tag ran code"
    if isinstance(outcome, Recipe):
        assert_round_trips(outcome, directory)
    return outcome


@fuzz(200)
@given(text=st.text(st.characters(exclude_categories=("Cs",))))
def test_any_text_loads_or_config_error(fuzz_dir, marker, text):
    _load_text(fuzz_dir, text, marker)


@fuzz(100)
@given(content=st.binary(max_size=64) | st.text(max_size=20).map(lambda t: t.encode("utf-16")))
def test_any_bytes_load_or_config_error(fuzz_dir, marker, content):
    _load_text(fuzz_dir, content, marker)


@fuzz(150)
@given(text=yamlish_text())
def test_yamlish_text_loads_or_config_error(fuzz_dir, marker, text):
    _load_text(fuzz_dir, text, marker)


@fuzz(250)
@given(text=yaml_document())
def test_yaml_documents_load_or_config_error(fuzz_dir, marker, text):
    _load_text(fuzz_dir, text, marker)


@fuzz(200)
@given(text=yaml_document() | yamlish_text() | st.text(max_size=30))
def test_safe_load_gives_plain_data_or_yaml_error(marker, text):
    try:
        data = safe_load(text.replace("{MARKER}", str(marker)))
    except (yaml.YAMLError, ConfigError) as err:
        if isinstance(err, ConfigError):
            assert_one_line(err)
        return
    finally:
        assert not marker.exists()
    assert_plain_data(data)


@pytest.mark.parametrize("payload", PAYLOAD_TAGS)
@pytest.mark.parametrize("where", ["top", "value", "override"])
def test_python_tags_never_run(fuzz_dir, marker, payload, where):
    payload = payload.replace("{MARKER}", str(marker))
    path = fuzz_dir / "tagged.yaml"
    if where == "top":
        path.write_text(payload, encoding="utf-8")
        overrides = []
    else:
        path.write_text(VALID_HEAD + (f"description: {payload}\n" if where == "value" else ""))
        overrides = [f"description={payload}"] if where == "override" else []
    outcome = expect_recipe_or_config_error(lambda: load_recipe(path, overrides))
    assert not marker.exists(), "a YAML tag ran code"
    if where == "override":  # a value that is not plain YAML data stays text
        assert isinstance(outcome, Recipe) and outcome.description == payload
    else:
        assert isinstance(outcome, ConfigError) and "not allowed" in str(outcome)


# ----------------------------------------------------------------------------- structured mutations
def _bases() -> list[dict[str, Any]]:
    bases = [tiny_recipe_dict(Path("runs/fuzz"))]
    for path in shipped_recipes():
        bases.append(load_raw(path))
    return bases


BASES = _bases()
WEIRD = [
    0, -1, -0.0, 1e-300, 10**20, 2**63, -(2**63) - 1, float("inf"), float("-inf"), float("nan"),
    True, False, None, "", " ", "x" * 5000, "é" * 100, "a\nb", "1e3", "2001-01-01", "=", [], {},
    [[[[[[[[]]]]]]]], {"a": {"b": {"c": {}}}}, ["x", 1, None], {"schedule": "linear_warmup"},
    {"schedule": "linear_warmup", "value": "abc"}, {"schedule": 3}, {1: 2}, {"": 1},
]  # fmt: skip
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats()
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-3, 3), inner, max_size=4)
    ),
    max_leaves=12,
)
VALUES = (JSON | st.sampled_from(WEIRD)).map(
    copy.deepcopy
)  # a copy: mutations must not touch WEIRD
NEW_KEYS = st.sampled_from(
    ["nmae", "Name", "epoch", "lr ", "studnet", "options", "weight", "loss", "unknown", "output"]
) | st.text(max_size=10).filter(lambda k: k not in ("plugins", "defaults"))
PLUGINS = st.sampled_from(
    [
        None,
        [],
        "",
        [""],
        [".x"],
        ["a..b"],
        ["1abc"],
        ["no_such_plugin_xyz"],
        [1],
        {"a": 1},
        ["distill"],
    ]
)


def _nodes(node: Any, path: tuple = (), above: frozenset = frozenset()) -> Iterator[tuple]:
    yield path
    if id(node) in above:  # an alias made a cycle: do not walk it forever
        return
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in items:
        yield from _nodes(child, (*path, key), above | {id(node)})


def _at(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key]
    return node


@st.composite
def mutated_recipe(draw: st.DrawFn) -> Any:
    """A shipped or tiny recipe with 1-4 mutations: drop, replace, insert, wrap, alias."""
    data: Any = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_nodes(data))
        path = draw(st.sampled_from(paths))
        op = draw(
            st.sampled_from(["drop", "replace", "replace", "insert", "wrap", "alias", "deep"])
        )
        if op == "insert":
            target = _at(data, path)
            if isinstance(target, dict):
                target[draw(NEW_KEYS)] = draw(VALUES)
            elif isinstance(target, list):
                target.insert(draw(st.integers(0, len(target))), draw(VALUES))
            continue
        if not path:  # the whole recipe
            if op == "replace":
                data = draw(VALUES)
            continue
        parent, key = _at(data, path[:-1]), path[-1]
        if op == "drop":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(VALUES)
        elif op == "wrap":
            parent[key] = draw(st.sampled_from([[parent[key]], {"x": parent[key]}]))
        elif (
            op == "alias"
        ):  # the same object twice: the dump uses &anchors and *aliases (maybe a cycle)
            parent[key] = _at(data, draw(st.sampled_from(paths)))
        else:
            depth = draw(st.integers(MAX_DEPTH - 10, MAX_DEPTH + 10))
            value: Any = parent[key]
            for _ in range(depth):
                value = [value]
            parent[key] = value
    if isinstance(
        data, dict
    ):  # random module names could import anything: plugins come from a safe list
        data.pop("plugins", None)
        if draw(st.integers(0, 9)) == 0:
            data["plugins"] = draw(PLUGINS)
    return data


@fuzz(200)
@given(data=mutated_recipe())
def test_mutated_recipes_load_or_config_error(fuzz_dir, data):
    path = fuzz_dir / "mutated.yaml"
    path.write_text(dump(data), encoding="utf-8")
    outcome = expect_recipe_or_config_error(lambda: load_recipe(path), str(path))
    if isinstance(outcome, Recipe):
        assert_round_trips(outcome, fuzz_dir)


# ----------------------------------------------------------------------------- defaults: includes
INCLUDE_JUNK = [
    "missing.yaml", "", ".", "..", "sub", "sub/", "../nope.yaml", "/nonexistent/x.yaml", "a\nb.yaml",
    "x" * 300 + ".yaml", "list.yaml", "scalar.yaml", "bad.yaml", "binary.yaml", "\x00",
]  # fmt: skip
CONTENTS = {  # the non-mapping files an include may point at
    "list.yaml": b"- a\n- b\n",
    "scalar.yaml": b"42\n",
    "bad.yaml": b"a: [\n",
    "binary.yaml": b"\xff\xfe\x00bad",
}
FRAGMENTS = [
    {},
    {"name": "inc"},
    {"student": {"name": "cnn", "options": {"channels": [4, 8]}}},
    {"train": {"epochs": 2, "lr": 0.1}},
    {"train": {"epochs": -1}},
    {"teacher": {"name": "cnn"}, "distill": {"terms": [{"loss": "kd"}]}},
    {"data": {"name": "nope"}},
    {"distill": None},
    {"train": "x"},
]


@st.composite
def include_graph(draw: st.DrawFn) -> dict[str, Any]:
    """1-4 files ``f0.yaml``... whose ``defaults:`` name each other (cycles too), missing or odd paths."""
    n = draw(st.integers(1, 4))
    name = st.integers(0, n - 1).map(lambda i: f"f{i}.yaml")
    entry = name | st.sampled_from(INCLUDE_JUNK)
    defaults = st.one_of(
        st.just("<absent>"),
        st.none(),
        name,
        st.lists(entry, max_size=3),
        st.sampled_from(
            [0, 1, False, True, {}, {"a": "f0.yaml"}, [1], [None], [["f0.yaml"]], "sub"]
        ),
    )
    files: dict[str, Any] = {}
    for i in range(n):
        kind = draw(st.sampled_from(["mapping"] * 4 + list(CONTENTS)))
        if kind != "mapping":
            files[f"f{i}.yaml"] = CONTENTS[kind]
            continue
        body = copy.deepcopy(draw(st.sampled_from(FRAGMENTS)))
        if i == 0 and draw(st.booleans()):
            body = {**copy.deepcopy(BASES[0]), **body}
        value = draw(defaults)
        if value != "<absent>":
            body["defaults"] = value
        files[f"f{i}.yaml"] = body
    return files


@fuzz(150)
@given(files=include_graph())
def test_defaults_includes_load_or_config_error(fuzz_dir, files):
    directory = Path(tempfile.mkdtemp(dir=fuzz_dir))
    try:
        (directory / "sub").mkdir()
        for name, content in {**CONTENTS, **files}.items():
            raw = content if isinstance(content, bytes) else dump(content).encode()
            (directory / name).write_bytes(raw)
        expect_recipe_or_config_error(lambda: load_recipe(directory / "f0.yaml"), str(directory))
    finally:
        shutil.rmtree(directory)


# ----------------------------------------------------------------------------- key=value overrides
KEY_PARTS = st.sampled_from(
    ["train", "lr", "epochs", "data", "student", "options", "channels", "teacher", "distill", "terms",
     "0", "1", "-1", "99", "name", "weight", "loss", "", " ", "²", "٣", "9" * 20, "9" * 5000, "a=b"]
) | st.text(max_size=6)  # fmt: skip
OVERRIDE_VALUES = st.sampled_from(["", *SCALARS]) | st.text(max_size=20)


@st.composite
def override_text(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text())
    key = ".".join(draw(st.lists(KEY_PARTS, min_size=1, max_size=5)))
    return f"{key}{draw(st.sampled_from(['=', '=', ' = ', '==', '']))}{draw(OVERRIDE_VALUES)}"


@fuzz(300)
@given(text=override_text())
def test_parse_override_parses_or_config_error(marker, text):
    text = text.replace("{MARKER}", str(marker))
    try:
        path, _value = parse_override(text)
    except ConfigError as err:
        assert_one_line(err)
        return
    finally:
        assert not marker.exists()
    assert path and all((isinstance(p, int) and p >= 0) or (isinstance(p, str) and p) for p in path)


@fuzz(200)
@given(base=st.sampled_from(BASES), text=override_text())
def test_apply_override_sets_or_config_error(base, text):
    data = copy.deepcopy(base)
    try:
        result = apply_override(data, text)
    except ConfigError as err:
        assert_one_line(err)
        return
    assert result is data and isinstance(result, dict)


@fuzz(150)
@given(overrides=st.lists(override_text(), min_size=1, max_size=3))
def test_load_recipe_with_overrides_loads_or_config_error(fuzz_dir, marker, overrides):
    path = fuzz_dir / "base.yaml"
    path.write_text(dump(BASES[0]), encoding="utf-8")
    overrides = [o.replace("{MARKER}", str(marker)) for o in overrides]
    outcome = expect_recipe_or_config_error(lambda: load_recipe(path, overrides))
    assert not marker.exists()
    if isinstance(outcome, Recipe):
        assert_round_trips(outcome, fuzz_dir)


IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,8}", fullmatch=True)
SIMPLE = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
)


@fuzz(200)
@given(
    base=st.dictionaries(IDENT, JSON, max_size=4),
    keys=st.lists(IDENT, min_size=1, max_size=4),
    value=SIMPLE | st.lists(SIMPLE, max_size=3),
)
def test_override_round_trip_sets_exactly_that_value(base, keys, value):
    raw = to_yaml(value, width=math.inf)  # the value as a user would type it (quoted where needed)
    data = copy.deepcopy(base)
    node: Any = (
        base  # the override fails only where a key on the way holds something that is not a mapping
    )
    for key in keys[:-1]:
        node = node.get(key)
        if not isinstance(node, dict):
            break
    blocked = node is not None and not isinstance(node, dict)
    try:
        apply_override(data, f"{'.'.join(keys)}={raw}")
    except ConfigError as err:
        assert_one_line(err, "override")
        assert blocked
        return
    assert not blocked
    got = _at(data, tuple(keys))
    assert type(got) is type(value) and repr(got) == repr(
        value
    )  # repr: NaN equals NaN, 1 is not 1.0
    for key in base.keys() - {keys[0]}:  # siblings untouched
        assert repr(data[key]) == repr(base[key])


@fuzz(100)
@given(
    terms=st.lists(st.sampled_from([0.5, 1, 2.0, 1e-3, 1e3]), min_size=2, max_size=3),
    index=st.integers(0, 2),
)
def test_override_list_index_round_trip(terms, index):
    data = {"distill": {"terms": [{"loss": "kd", "weight": w} for w in terms]}}
    text = f"distill.terms.{index}.weight=7.5"
    if index >= len(terms):
        with pytest.raises(ConfigError) as excinfo:
            apply_override(data, text)
        assert_one_line(excinfo.value, "out of range")
    else:
        apply_override(data, text)
        assert [t["weight"] for t in data["distill"]["terms"]] == [
            7.5 if i == index else w for i, w in enumerate(terms)
        ]


@fuzz(100)
@given(name=st.text(max_size=40))
def test_any_recipe_name_loads_or_config_error(name):
    expect_recipe_or_config_error(lambda: load_recipe(name))


# ----------------------------------------------------------------------------- regressions
# Each input below escaped as another exception (or a multi-line / unbounded message) before the fix.
def _write(directory: Path, content: str | bytes, name: str = "regress.yaml") -> Path:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _config_error(path: Path | str, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as excinfo:
        load_recipe(path, overrides or [])
    return assert_one_line(excinfo.value)


def test_regression_not_utf8_bytes(fuzz_dir):  # was UnicodeDecodeError
    path = _write(fuzz_dir, b"name: t\xff\n")
    message = _config_error(path)
    assert str(path) in message and "not UTF-8" in message and "0xff" in message


def test_regression_utf8_bom_is_fine(fuzz_dir):
    path = _write(fuzz_dir, b"\xef\xbb\xbf" + VALID_HEAD.encode())
    assert load_recipe(path).name == "fuzz"


@pytest.mark.parametrize(
    "nested", ["[" * 400 + "]" * 400, "[" * 600 + "]" * 600, "{a: " * 300 + "1" + "}" * 300]
)
def test_regression_deep_nesting(fuzz_dir, nested):  # was RecursionError
    assert "nested more than" in _config_error(
        _write(fuzz_dir, VALID_HEAD + f"task_options: {nested}\n")
    )


def test_regression_nesting_up_to_the_limit_loads(fuzz_dir):
    levels = (
        MAX_DEPTH - 2
    )  # recipe (depth 0) -> student -> options -> x: the innermost list at MAX_DEPTH
    options = "{x: " + "[" * levels + "]" * levels + "}"
    path = _write(
        fuzz_dir, f"name: t\nstudent: {{name: 'torchvision:resnet18', options: {options}}}\n"
    )
    expected: list = []
    for _ in range(levels - 1):
        expected = [expected]
    assert load_recipe(path).student.options["x"] == expected
    path.write_text(path.read_text().replace("{x: [", "{x: [[").replace("]}", "]]}"))  # one more
    assert "nested more than" in _config_error(path)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("!!int abc", "'abc' is not a valid int"),  # was ValueError
        ("!!float abc", "'abc' is not a valid float"),  # was ValueError
        ("!!bool maybe", "'maybe' is not a valid bool"),  # was KeyError
        ("!!timestamp nope", "is not allowed"),  # was AttributeError
        (
            "!!binary AAAA",
            "is not allowed",
        ),  # loaded bytes that recipe_to_yaml could not write back
        ("!!set {a, b}", "is not allowed"),
        ("!!omap [a: 1]", "is not allowed"),
        ("9" * 5000, "is not a valid int"),  # was ValueError (Python's 4300-digit int limit)
    ],
)
def test_regression_bad_tagged_values(fuzz_dir, value, needle):
    message = _config_error(_write(fuzz_dir, VALID_HEAD + f"description: {value}\n"))
    assert needle in message and "line 3, column 14" in message
    assert "set_int_max_str_digits" not in message and len(message) < 400


@pytest.mark.parametrize(
    "value", ["2001-13-45", "2001-01-01", "2001-01-01T00:00:00+99:00", "="]
)  # were ValueError (bad dates), a datetime.date, and "could not determine a constructor" for '='
def test_regression_dates_and_equals_sign_are_strings(fuzz_dir, value):
    assert (
        load_recipe(_write(fuzz_dir, VALID_HEAD + f"description: {value}\n")).description == value
    )
    assert parse_override(f"description={value}") == (["description"], value)


def test_regression_newline_in_unknown_key(fuzz_dir):  # the message was two lines
    message = _config_error(_write(fuzz_dir, VALID_HEAD + '"a\\nb": 1\n'))
    assert "'a\\nb': unknown key" in message


def test_regression_huge_value_in_message_is_cut(
    fuzz_dir,
):  # the message held all 100,000 characters
    message = _config_error(_write(fuzz_dir, "name: " + "é" * 100_000 + "\nstudent: {name: cnn}\n"))
    assert "name: String should match pattern" in message and len(message) < 400


def test_regression_alias_bomb(fuzz_dir):  # the error message repr'd 10^8 strings (25 MB, minutes)
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    start = time.perf_counter()
    message = _config_error(_write(fuzz_dir, VALID_HEAD + "\n".join(lines) + "\nplugins: [*a7]\n"))
    assert "aliases expand to more than" in message and time.perf_counter() - start < 5


@pytest.mark.parametrize(
    "text",
    [
        "task_options: &a {x: *a}\n",
        "student: &s {name: 'torchvision:resnet18', options: {x: *s}}\n",  # loaded, then model_dump failed
        "description: &l [*l]\n",
    ],
)
def test_regression_self_referencing_alias(fuzz_dir, text):
    head = "name: t\n" + ("" if text.startswith("student") else "student: {name: cnn}\n")
    assert "refers to a value that contains it" in _config_error(_write(fuzz_dir, head + text))


def test_regression_shared_alias_is_fine(fuzz_dir):
    path = _write(fuzz_dir, "name: t\nstudent: &s {name: cnn}\nteacher: *s\n")
    assert load_recipe(path).teacher == load_recipe(path).student


@pytest.mark.parametrize(
    ("plugins", "needle"),
    [
        ("['']", "not a module name"),
        ("['.x']", "not a module name"),
        ("['a..b']", "not a module name"),
    ],
)  # were ValueError ('Empty module name') and TypeError (relative import without package)
def test_regression_plugin_names(fuzz_dir, plugins, needle):
    assert needle in _config_error(_write(fuzz_dir, VALID_HEAD + f"plugins: {plugins}\n"))


@pytest.mark.parametrize(
    ("defaults", "needle"),
    [
        ("['" + "a" * 5000 + "']", "not found"),  # was OSError (File name too long)
        ('["a\\nb.yaml"]', "not found"),  # the looked-at path broke the line
        ("['']", "must be a list of recipe paths"),  # was 'not found' for the folder itself
        ("0", "must be a list of recipe paths"),  # 0, false and {} were silently ignored
        ("false", "must be a list of recipe paths"),
        ("{}", "must be a list of recipe paths"),
    ],
)
def test_regression_odd_defaults(fuzz_dir, defaults, needle):
    message = _config_error(_write(fuzz_dir, VALID_HEAD + f"defaults: {defaults}\n"))
    assert needle in message and len(message) < 600


@pytest.mark.parametrize("name", ["", ".", "/", "a" * 5000, "x/.."])
def test_regression_odd_recipe_names(name):  # '', '.', '/' were ValueError, 'aaa...' OSError
    assert "not found" in _config_error(name)


def test_regression_override_index_parts():
    assert parse_override("train.²=1") == (["train", "²"], 1)  # was ValueError from int('²')
    assert parse_override("a." + "9" * 5000 + "=1")[0] == [
        "a",
        "9" * 5000,
    ]  # was ValueError (int limit)
    assert parse_override("a.12=1")[0] == ["a", 12]


def test_regression_override_values():
    assert parse_override("description=!!int x") == (["description"], "!!int x")  # was ValueError
    with pytest.raises(ConfigError) as excinfo:  # was RecursionError
        parse_override("x=" + "[" * 600 + "]" * 600)
    assert "nested more than" in assert_one_line(excinfo.value)
    with pytest.raises(ConfigError) as excinfo:  # said "index 0 is out of range at " (nothing)
        apply_override({}, "0.x=1")
    assert "at the top level" in assert_one_line(excinfo.value)
    with pytest.raises(ConfigError) as excinfo:  # the raw key part broke the line
        apply_override({"a\x1eb": 5}, "a\x1eb.x.y=1")
    assert "'a\\x1eb' is not a mapping" in assert_one_line(excinfo.value)
    with pytest.raises(ConfigError) as excinfo:  # the message held the 5000-character key twice
        apply_override({}, "9" * 5000 + ".0.x=1")
    assert "out of range" in assert_one_line(excinfo.value)


@pytest.mark.parametrize("weight", [".nan", ".inf", "-.inf"])
def test_regression_non_finite_term_weight(fuzz_dir, weight):  # loaded; NaN/inf poison the loss
    text = (
        VALID_HEAD
        + f"teacher: {{name: cnn}}\ndistill: {{terms: [{{loss: kd, weight: {weight}}}]}}\n"
    )
    assert "finite" in _config_error(_write(fuzz_dir, text))


@pytest.mark.parametrize("description", ["1e3", "2001-01-01", "=", "1_000", "-1e-9"])
def test_regression_resolved_recipe_round_trips(fuzz_dir, description):
    # recipe_to_yaml wrote 1e3 unquoted, which the loader reads as a float: run_recipe() then failed
    recipe = load_recipe(_write(fuzz_dir, VALID_HEAD), [f"description='{description}'"])
    assert recipe.description == description
    assert_round_trips(recipe, fuzz_dir)


def test_regression_infinite_train_value_round_trips(fuzz_dir):
    # model_dump(mode="json") wrote inf as null, which does not load back (free-form options may hold inf)
    head = "name: t\nstudent: {name: 'torchvision:resnet18', options: "
    recipe = load_recipe(_write(fuzz_dir, head + "{x: .inf, y: -.inf}}\n"))
    assert recipe.student.options == {"x": float("inf"), "y": float("-inf")}
    assert_round_trips(recipe, fuzz_dir)
    # training settings themselves must be finite
    assert "finite number" in _config_error(
        _write(fuzz_dir, VALID_HEAD + "train: {grad_clip: .inf}\n")
    )


def test_regression_value_limit_only_applies_to_aliases(fuzz_dir, monkeypatch):
    monkeypatch.setattr("distill.config.safe_yaml.MAX_VALUES", 50)
    listed = ", ".join(["1"] * 60)
    head = "name: t\nstudent: {name: 'torchvision:resnet18', options: "
    assert (
        load_recipe(_write(fuzz_dir, head + f"{{x: [{listed}]}}}}\n")).student.options["x"]
        == [1] * 60
    )
    aliased = head + "{x: &x [1, 1, 1, 1, 1, 1, 1, 1], y: [*x, *x, *x, *x, *x, *x, *x, *x]}}\n"
    assert "aliases expand to more than 50 values" in _config_error(_write(fuzz_dir, aliased))


def test_regression_python_api_values_still_dump(fuzz_dir):
    # recipe_to_yaml keeps JSON mode (tuples -> lists) and only restores non-finite floats
    recipe = Recipe(
        name="api",
        student={"name": "torchvision:resnet18", "options": {"sizes": (1, 2), "eps": float("nan")}},
    )
    text = recipe_to_yaml(recipe)
    assert "sizes:\n    - 1\n    - 2" in text and "eps: .nan" in text
    assert_round_trips(recipe, fuzz_dir)
