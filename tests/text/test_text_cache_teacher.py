"""distill.cache_teacher on text: per-sample @logits can be cached; per-token outputs (@hidden_states.N,
@attentions.N), whose length follows each batch's padding, are refused up front with the reason."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from torch import nn

from distill.config.schema import Recipe
from distill.errors import DistillError
from distill.tasks.text import TextClassificationTask
from distill.teacher_cache import CachedTeacher


def text_recipe(teacher_tap: str, **train: Any) -> dict[str, Any]:
    return {
        "name": "t",
        "task": "text_classification",
        "data": {"name": "text_file", "root": "reviews"},
        "teacher": {"name": "hf:bert"},
        "student": {"name": "from_teacher", "options": {"layers": [0, 2]}},
        "distill": {
            "cache_teacher": True,
            "terms": [
                {"loss": "hidden_mse", "student": teacher_tap, "teacher": teacher_tap}
                if teacher_tap != "@logits"
                else {"loss": "kd"}
            ],
        },
        "train": train,
    }


@pytest.mark.parametrize("tap", ["@hidden_states.*", "@hidden_states.2", "@attentions.1"])
@pytest.mark.parametrize("grouped", [True, False])
def test_per_token_taps_with_cache_teacher_are_refused(tap: str, grouped: bool) -> None:
    with pytest.raises(ValidationError) as info:
        Recipe(**text_recipe(tap, group_by_length=grouped))
    message = str(info.value)
    assert f"distill.terms.0.teacher taps {tap!r}" in message
    assert "per-token output of the text_classification task" in message
    assert "(@logits) or turn cache_teacher off" in message


def test_text_logits_can_be_cached() -> None:
    recipe = Recipe(**text_recipe("@logits", group_by_length=True))
    assert recipe.distill.cache_teacher


def test_cached_teacher_refuses_per_token_taps_in_the_python_api() -> None:
    task = TextClassificationTask()
    with pytest.raises(DistillError, match=r"'@hidden_states.3', a per-token output"):
        CachedTeacher(nn.Linear(2, 2), task, ["@logits", "@hidden_states.3"])
    assert CachedTeacher(nn.Linear(2, 2), task, ["@logits"]).names == ["@logits"]
