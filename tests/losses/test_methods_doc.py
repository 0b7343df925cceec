"""docs/methods.md is generated from the registry and the loss docstrings; it must be current."""

from __future__ import annotations

from distill.losses import LOSSES
from distill.losses._docs import DOC, group, methods_markdown


def test_methods_doc_is_current():
    assert DOC.is_file(), "docs/methods.md is missing; run: python -m distill.losses._docs"
    assert DOC.read_text() == methods_markdown(), (
        "docs/methods.md is out of date; run: python -m distill.losses._docs"
    )


def test_every_method_is_documented_with_a_recipe():
    text = methods_markdown()
    for name in LOSSES.names():
        assert f"### {name}\n" in text
        if group(name) in ("text", "detection", "lm"):
            continue  # token-sequence, detection and language-model methods cannot run on Fashion-MNIST
        assert f"`fashion_mnist/{name}`" in text, f"{name} has no shipped Fashion-MNIST recipe"


def test_the_generator_reads_the_recipes_config_loads():
    """The generator sits below config (layers) and finds the shipped recipes itself; same folder."""
    from distill.config.load import BUILTIN_RECIPES
    from distill.losses._docs import RECIPES

    assert RECIPES == BUILTIN_RECIPES and RECIPES.is_dir()
