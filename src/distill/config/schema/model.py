"""``student:`` and ``teacher:``: a model by registry name, framework prefix, ``from_teacher`` or
``MODULE:FUNCTION``, its factory options (checked against its signature) and optional weights."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from distill.config.schema.base import Strict, _lookup
from distill.models import MODELS, student_from_teacher
from distill.registry import check_kwargs

# a student built from the teacher (distill.models.student_from_teacher: gpt or Hugging Face)
FROM_TEACHER = "from_teacher"


class ModelSpec(Strict):
    name: str = Field(
        description="registry name (`distill list models`), torchvision:NAME / timm:NAME / hf:FOLDER_OR_HUB_ID, "
        "from_teacher (a student keeping the teacher's embeddings and some of its layers), or "
        "MODULE:FUNCTION, a factory f(num_classes, in_channels, **options) in a module listed under plugins"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the model factory"
    )
    weights: str | None = Field(
        None, description="a run directory, a .safetensors file or a .pt/.pth state dict"
    )

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        for key in ("num_classes", "in_channels"):
            if key in self.options:
                raise ValueError(
                    f"options.{key}={self.options[key]!r}: {key} comes from the data, not the recipe; "
                    "remove it from the options"
                )
        if self.name == FROM_TEACHER:
            check_kwargs(student_from_teacher, self.options, what=FROM_TEACHER, skip=("teacher",))
        elif ":" not in self.name or self.name in MODELS:  # a registered name or module:function
            check_kwargs(
                _lookup("model", self.name),
                self.options,
                what=f"model {self.name!r}",
                skip=("num_classes", "in_channels"),
            )
        return self
