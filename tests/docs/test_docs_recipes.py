"""Every whole recipe a docs page shows (a YAML block with `student:` and no `defaults:`) validates as
written: a reader copies it into a file and runs it. Recipes that need the page's own plugin module are
run in full by their page's test (tests/docs/test_plugins_page.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from distill.config.schema import Recipe

ROOT = Path(__file__).resolve().parents[2]


def page_recipes() -> list[tuple[str, dict]]:
    found = []
    for page in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]:
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", page.read_text(), flags=re.S)):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and "student" in data and "defaults" not in data:
                if not data.get("plugins"):
                    found.append((f"{page.name}#{i}", data))
    return found


@pytest.mark.parametrize("where,data", page_recipes(), ids=[w for w, _ in page_recipes()])
def test_a_whole_recipe_on_a_page_validates(where: str, data: dict) -> None:
    Recipe.model_validate(data)
