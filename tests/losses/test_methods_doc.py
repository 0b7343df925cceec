"""docs/methods.md is generated from the registry and the loss docstrings; it must be current."""

from __future__ import annotations

from distill.losses import LOSSES
from distill.losses._docs import DOC, TEXT_INPUTS, methods_markdown


def test_methods_doc_is_current():
    assert DOC.is_file(), "docs/methods.md is missing; run: python -m distill.losses._docs"
    assert DOC.read_text() == methods_markdown(), (
        "docs/methods.md is out of date; run: python -m distill.losses._docs"
    )


def test_every_method_is_documented_with_a_recipe():
    text = methods_markdown()
    for name in LOSSES.names():
        assert f"### {name}\n" in text
        if LOSSES.meta(name).get("inputs") in TEXT_INPUTS:
            continue  # token-sequence methods cannot run on Fashion-MNIST (text recipes: docs/text.md)
        assert f"`fashion_mnist/{name}`" in text, f"{name} has no shipped Fashion-MNIST recipe"
