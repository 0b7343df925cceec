"""Recipe YAML that would silently mean something else (a key written twice) or that would parse for
minutes (huge files, lists, documents) is refused with one line naming the file, the lines or the limit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from distill.config import load as load_module
from distill.config.load import load_recipe
from distill.config.safe_yaml import MAX_CHARS, MAX_ITEMS, MAX_NODES, safe_load
from distill.errors import ConfigError

HEAD = "name: t\nstudent: {name: cnn}\n"


def _error(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_second_train_block_is_refused_with_both_lines(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        HEAD
        + "train:\n  epochs: 5\n  lr: 0.1\ndata:\n  name: tensors\n  root: d\ntrain:\n  epochs: 1\n"
    )
    message = _error(recipe)
    assert message.endswith("recipe.yaml: key 'train' appears twice (lines 3 and 9); keep one")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.01\n", "key 'lr' appears twice (lines 4 and 6)"),
        ("train: {lr: 0.1, lr: 0.01}\n", "key 'lr' appears twice (lines 3 and 3)"),
        (
            "distill:\n  terms:\n    - {loss: kd, weight: 1, weight: 2}\n",
            "key 'weight' appears twice",
        ),
    ],
)
def test_key_twice_in_any_mapping_is_refused(tmp_path: Path, text: str, needle: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(HEAD + text)
    message = _error(recipe)
    assert needle in message and "keep one" in message and "r.yaml" in message


def test_merge_keys_may_still_be_overridden() -> None:
    data = safe_load("base: &b {lr: 0.1, epochs: 2}\ntrain:\n  <<: *b\n  lr: 0.5\n")
    assert data["train"] == {"lr": 0.5, "epochs": 2}


def test_key_twice_in_an_override_value_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(HEAD)
    message = _error(recipe, ("student.options={channels: [4], channels: [8]}",))
    assert "override" in message and "key 'channels' appears twice" in message


def test_oversized_recipe_file_is_refused_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = tmp_path / "big.yaml"
    recipe.write_text(HEAD + "description: " + "x" * MAX_CHARS + "\n")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was parsed")

    monkeypatch.setattr(load_module, "safe_load", never)
    message = _error(recipe)
    assert "big.yaml" in message and f"{MAX_CHARS:,}" in message


def test_one_line_flow_list_stops_at_the_item_cap(tmp_path: Path) -> None:
    recipe = tmp_path / "flow.yaml"
    recipe.write_text(HEAD + "description: [" + "1, " * (MAX_ITEMS * 3) + "1]\n")
    started = time.perf_counter()
    message = _error(recipe)
    assert time.perf_counter() - started < 10
    assert (
        "flow.yaml" in message and "list at line 3" in message and f"{MAX_ITEMS} items" in message
    )


def test_mapping_with_too_many_keys_is_refused() -> None:
    text = "{" + ", ".join(f"k{i}: 1" for i in range(MAX_ITEMS + 1)) + "}"
    with pytest.raises(ConfigError, match=f"mapping at line 1 has more than {MAX_ITEMS} items"):
        safe_load(text, "m.yaml")


def test_too_many_values_in_all_are_refused() -> None:
    rows = MAX_NODES // 20 + 1
    text = "\n".join(f"k{i}: [{', '.join(['1'] * 19)}]" for i in range(rows))
    assert len(text) < MAX_CHARS
    with pytest.raises(ConfigError, match=f"n.yaml: more than {MAX_NODES} values"):
        safe_load(text, "n.yaml")


def test_override_values_go_through_the_caps(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(HEAD)
    message = _error(recipe, ("description=[" + "1," * (MAX_ITEMS + 1) + "1]",))
    assert "override" in message and f"{MAX_ITEMS} items" in message
    message = _error(recipe, ("description=" + "x" * (MAX_CHARS + 1),))
    assert "override" in message and f"{MAX_CHARS:,}" in message


@pytest.mark.parametrize("text", ["- !!map [1, [2, [3]]]\n- 1\n", "- !!map 1\n"])
def test_map_tag_on_a_list_or_scalar_is_still_a_yaml_error(text: str) -> None:
    # the duplicate-key check must leave a non-mapping node to the base class (found by test_fuzz)
    with pytest.raises(yaml.YAMLError, match="expected a mapping node"):
        safe_load(text)
