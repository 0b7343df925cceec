"""Recipe schemas (pydantic v2, ``extra="forbid"``). Names are checked against the registries here, so
``distill validate`` catches a typo without building anything.

One module per part of a recipe: :mod:`.base` (the strict base model, registry lookups, weights and
schedules), :mod:`.model` (``student:``/``teacher:``), :mod:`.data` (``data:``), :mod:`.terms`
(``distill:``), :mod:`.lm` (its language-model caches and data modes), :mod:`.after_training`
(``export:``, ``qat:``, ``compare:`` and ``override``), :mod:`.tune` (``tune:``) and :mod:`.recipe`
(:class:`Recipe` and the rules that span sections). Import from ``distill.config.schema``."""

from distill.config.schema.after_training import (
    AFTER_TRAINING,
    CompareSpec,
    ExportSpec,
    QatSpec,
    SpecT,
    override,
)
from distill.config.schema.base import REGISTRIES, ScheduleSpec, Strict, Weight
from distill.config.schema.data import AugmentSpec, DataSpec, TransferDataSpec, TransferSpec
from distill.config.schema.lm import DATA_MODE_FIELDS, DataModeSpec, TopKCacheSpec
from distill.config.schema.model import FROM_TEACHER, ModelSpec
from distill.config.schema.recipe import Recipe
from distill.config.schema.terms import AUTO, AUTO_INPUTS, LAYER_TAP, DistillSpec, TermSpec
from distill.config.schema.tune import TUNABLE_SECTIONS, TuneParam, TuneSpec

__all__ = [
    "AFTER_TRAINING",
    "AUTO",
    "AUTO_INPUTS",
    "DATA_MODE_FIELDS",
    "FROM_TEACHER",
    "LAYER_TAP",
    "REGISTRIES",
    "TUNABLE_SECTIONS",
    "AugmentSpec",
    "CompareSpec",
    "DataModeSpec",
    "DataSpec",
    "DistillSpec",
    "ExportSpec",
    "ModelSpec",
    "QatSpec",
    "Recipe",
    "ScheduleSpec",
    "SpecT",
    "Strict",
    "TermSpec",
    "TopKCacheSpec",
    "TransferDataSpec",
    "TransferSpec",
    "TuneParam",
    "TuneSpec",
    "Weight",
    "override",
]
