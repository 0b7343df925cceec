"""The only place that turns a validated :class:`Recipe` into objects (datasets, models, terms, trainer):
:func:`build` and the distiller and trainer it makes; the data splits come from :mod:`.splits`, the
models and their weights from :mod:`.models`, the device check from :mod:`.device` (their public names
are importable from here too)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.config.autopair import is_auto, pair_auto_terms
from distill.config.checks import check_on_example, check_taps, example_batch
from distill.config.device import check_device
from distill.config.device import resolve_device as resolve_device  # re-exported
from distill.config.lmvocab import pair_teacher_vocab, slice_padded_heads
from distill.config.models import build_models, build_student, build_teacher
from distill.config.models import load_weights as load_weights  # re-exported
from distill.config.models import slow_batchnorm_warning as slow_batchnorm_warning  # re-exported
from distill.config.schema import (
    FROM_TEACHER,
    AugmentSpec,
    DistillSpec,
    Recipe,
    ScheduleSpec,
    TermSpec,
)
from distill.config.splits import build_data, data_shape, prepare_text_data
from distill.config.topk import cache_is_full, data_modes, topk_source
from distill.data import build_dataset as build_dataset  # re-exported
from distill.data.augment import BatchAugment, TokenMask, build_augment, view_augment
from distill.data.base import eval_loader as eval_loader  # re-exported for the assembly path
from distill.data.views import ConsistentAugment
from distill.distiller import Distiller, TeacherSource, Term
from distill.errors import ConfigError, DistillError, first_line
from distill.losses import build_loss
from distill.losses._chunked import ChunkedTokenLoss
from distill.losses.base import contract_of
from distill.models.hf import layer_map, num_layers
from distill.schedules import SCHEDULES, Schedule, weight_at
from distill.tasks import Task, build_task
from distill.teacher_cache import CachedTeacher
from distill.train import Trainer
from distill.train.config import TrainConfig


@dataclass
class Built:
    """Everything a recipe describes, ready to train."""

    recipe: Recipe
    train_data: Any
    test_data: Any
    student: nn.Module
    teacher: nn.Module | None
    distiller: Distiller
    augment: BatchAugment | TokenMask | ConsistentAugment | None
    pairing: list[str] = field(default_factory=list)  # what auto taps resolved to, one line a term
    notes: list[str] = field(default_factory=list)  # assembly decisions to print (padded LM heads)


def build_weight(weight: float | ScheduleSpec, where: str = "weight") -> float | Schedule:
    """A constant or a schedule, evaluated once now so a bad option fails here, not mid-training."""
    if not isinstance(weight, ScheduleSpec):
        return float(weight)
    options = weight.model_extra or {}
    schedule = SCHEDULES.get(weight.schedule)(**options)
    try:
        weight_at(schedule, 0.0), weight_at(schedule, 1.0)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"{where}: schedule {weight.schedule!r} cannot use options {options} ({err}); "
            "give numbers, e.g. {schedule: linear_warmup, value: 1.0, warmup_epochs: 5}"
        ) from None
    return schedule


CHUNKED_HIDDEN, CHUNKED_HEAD = "@lm_hidden", "@lm_head"  # causal_lm's outputs for the chunked path


def chunked_taps(spec: TermSpec) -> TermSpec:
    """A ``chunk_size`` term reads ``[@lm_hidden, @lm_head]`` of each model instead of ``@logits``
    (``causal_lm``'s named outputs; the schema allows chunk_size only on ``@logits`` token losses)."""
    if spec.chunk_size is None:
        return spec
    taps = [CHUNKED_HIDDEN, CHUNKED_HEAD]
    return spec.model_copy(update={"student": taps, "teacher": list(taps)})


def build_term(spec: TermSpec, where: str = "distill.terms") -> Term:
    try:
        loss = build_loss(spec.loss, **spec.options)
    except (TypeError, ValueError) as err:  # the loss's own checks of its option values
        if isinstance(err, DistillError):
            raise
        raise ConfigError(
            f"{where}: loss {spec.loss!r} rejected options {spec.options} ({first_line(err)}); "
            "fix the option values"
        ) from None
    if spec.chunk_size is not None:  # the same loss from hidden states and head weights
        loss = ChunkedTokenLoss(loss, spec.chunk_size)
    return Term(
        loss=loss,
        student=spec.student,
        teacher=spec.teacher,
        weight=build_weight(spec.weight, f"{where}.weight"),
        projector=spec.projector,
        name=spec.name or spec.loss,
    )


def recipe_task(recipe: Recipe) -> Task:
    """The recipe's task adapter (``task`` + ``task_options``)."""
    return build_task(recipe.task, **recipe.task_options)


def build(
    recipe: Recipe, data: tuple[Any, Any] | None = None, student_weights: bool = True
) -> Built:
    """Build data, models and the distiller for ``recipe`` (seeded with ``train.seed``) and check them on
    two training samples (:func:`~distill.config.checks.check_on_example`): everything ``train`` needs.
    ``student_weights=False`` leaves out the student's ``weights:`` (a resumed run's checkpoint
    replaces them, and the file it started from may be gone)."""
    torch.manual_seed(recipe.train.seed)
    train, test = data or build_data(recipe)
    num_classes, in_channels = data_shape(recipe, train)
    recipe = pair_teacher_vocab(recipe, train)
    # a complete top-k cache answers for the teacher: it is not loaded (unless the student is cut from it)
    mode = recipe.distill.data_mode
    skip = (
        cache_is_full(recipe, train)
        and recipe.student.name != FROM_TEACHER
        and (mode is None or mode.mode == "teacher_forced")  # generated text is scored online
    )
    student, teacher = build_models(
        recipe, num_classes, in_channels, "skip" if skip else "load", student_weights
    )
    task = recipe_task(recipe)
    prepare_text_data(recipe, (train, test), student, teacher)
    recipe, pairing = resolve_auto_taps(recipe, train, student, teacher, task)
    recipe, notes = slice_padded_heads(recipe, student, teacher, num_classes)
    source = None
    if recipe.distill.topk_cache is not None:
        taps = [t for term in recipe.distill.terms for t in _taps(term.teacher)]
        source = topk_source(recipe, train, task, taps, None if skip else teacher)
    if recipe.distill.data_mode is not None:
        source = data_modes(recipe, task, teacher, source)
    distiller = build_distiller(
        recipe.distill, student, teacher, task, source, recipe.data.augment, recipe.train.seed
    )
    check_on_example(distiller, train, recipe)
    augment = build_augment(recipe.data.augment, train)
    check_mixing(augment, distiller)
    if recipe.distill.cache_teacher and recipe.distill.cache_views:
        augment = None  # the cache's stored views are what both models read (TeacherSource.view)
    return Built(recipe, train, test, student, teacher, distiller, augment, pairing, notes)


def resolve_auto_taps(
    recipe: Recipe, train: Any, student: nn.Module, teacher: nn.Module | None, task: Task
) -> tuple[Recipe, list[str]]:
    """``recipe`` with ``student: auto`` / ``teacher: auto`` terms resolved to module names from one
    example batch of ``train`` (:mod:`distill.config.autopair`), and a line per resolved term."""
    if teacher is None or not any(is_auto(t) for t in recipe.distill.terms):
        return recipe, []
    inputs = task.split(example_batch(train)).inputs
    spec, notes = pair_auto_terms(
        recipe.distill, student, teacher, lambda model: task.forward(model, inputs)
    )
    return recipe.model_copy(update={"distill": spec}), notes


def resolved_recipe(recipe: Recipe) -> tuple[Recipe, list[str]]:
    """``recipe`` as :func:`build` runs it (``auto`` taps resolved on the models without their
    weights, which do not change shapes), for ``distill config``; the recipe itself without auto taps."""
    if recipe.teacher is None or not any(is_auto(t) for t in recipe.distill.terms):
        return recipe, []
    torch.manual_seed(recipe.train.seed)
    train, test = build_data(recipe)
    num_classes, in_channels = data_shape(recipe, train)
    teacher = build_teacher(recipe, num_classes, in_channels, weights=False)
    student = build_student(recipe, num_classes, in_channels, teacher, weights=False)
    task = recipe_task(recipe)
    prepare_text_data(recipe, (train, test), student, teacher)
    return resolve_auto_taps(recipe, train, student, teacher, task)


def build_distiller(
    spec: DistillSpec,
    student: nn.Module,
    teacher: nn.Module | None,
    task: Task,
    source: TeacherSource | None = None,
    augment: AugmentSpec | None = None,
    seed: int = 0,
) -> Distiller:
    """The :class:`Distiller` for a recipe's ``distill:`` section: terms built (``@layer.*`` taps expanded,
    module taps checked, costly task outputs requested), the teacher online or cached
    (``cache_teacher``; with ``cache_views``, the stored views of ``augment``, each epoch's pick drawn
    from ``seed``) or ``source`` as given (a top-k cache: ``teacher`` may then be None). No data is
    touched: :func:`build` checks the result on an example batch."""
    specs = [
        chunked_taps(expand_layer_taps(t, student, teacher, i)) for i, t in enumerate(spec.terms)
    ]
    for i, term in enumerate(specs):  # name the term and side of a bad tap
        check_taps(student, term.student, f"distill.terms.{i}.student")
        if teacher is not None:
            check_taps(teacher, term.teacher, f"distill.terms.{i}.teacher")
    # outputs that cost extra (attention weights)
    task.request(tap for t in specs for side in (t.student, t.teacher) for tap in _taps(side))
    terms = [build_term(t, f"distill.terms.{i}") for i, t in enumerate(specs)]
    distiller = Distiller(
        student,
        task,
        teacher=teacher,
        terms=terms,
        task_weight=build_weight(spec.task_weight, "distill.task_weight"),
        source=source,
    )
    if spec.cache_teacher and teacher is not None:  # the Trainer fills it (prepare)
        views = view_augment(augment) if augment is not None and spec.cache_views else None
        distiller.source = CachedTeacher(
            teacher,
            task,
            distiller.teacher_taps,
            views=views,
            count=spec.cache_views if views is not None else 0,
            topk=spec.cache_topk,
            seed=seed,
        )
    return distiller


def check_mixing(augment: Any, distiller: Distiller) -> None:
    """Mixup/cutmix leave no hard label per sample: a term whose loss reads ``labels`` is refused."""
    if not isinstance(augment, ConsistentAugment) or augment.mix is None:
        return
    for term, name in zip(distiller.terms, distiller.student_side.names, strict=True):
        if "labels" in contract_of(term.loss).extra_inputs:
            raise DistillError(
                f"distill term {name!r} reads hard labels, but data.augment.mixup/cutmix mix two labels "
                "per sample; set mixup and cutmix to 0 or use a term without labels (e.g. kd)"
            )


def _taps(side: str | list[str]) -> list[str]:
    return [side] if isinstance(side, str) else list(side)


def expand_layer_taps(
    spec: TermSpec, student: nn.Module, teacher: nn.Module | None, index: int
) -> TermSpec:
    """``@hidden_states.*`` / ``@attentions.*`` become one tap per student layer and its mapped teacher layer.

    Hidden states are numbered 1..L (0 is the embeddings, left out); attentions 0..L-1.
    """
    if not (isinstance(spec.student, str) and spec.student.endswith("*")) or teacher is None:
        return spec
    where = f"distill.terms.{index}"
    try:
        s_layers, t_layers = num_layers(student), num_layers(teacher)
        mapped = layer_map(s_layers, t_layers, spec.layer_map)
    except AttributeError:
        raise ConfigError(
            f"{where}: layer taps with '*' need Hugging Face models (hf:... or from_teacher); "
            "name the layers, e.g. @hidden_states.2"
        ) from None
    except DistillError as err:
        raise ConfigError(f"{where}: {err}") from None
    kind = spec.student[1:].split(".")[0]
    first = 1 if kind == "hidden_states" else 0  # attentions.N counts layers from 0
    teacher_kind = spec.teacher[1:].split(".")[0]
    return spec.model_copy(
        update={
            "student": [f"@{kind}.{i - 1 + first}" for i in range(1, s_layers + 1)],
            "teacher": [f"@{teacher_kind}.{m - 1 + first}" for m in mapped],
        }
    )


def make_trainer(built: Built, run_dir: str | Path | None = None, **trainer_kwargs: Any) -> Trainer:
    """The :class:`Trainer` for what :func:`build` made, writing to ``run_dir`` (default: the recipe's)."""
    recipe = built.recipe
    return build_trainer(
        built.distiller,
        built.train_data,
        built.test_data,
        recipe.train,
        run_dir=run_dir or recipe.run_dir,
        augment=built.augment,
        **{"recipe": recipe.model_dump(mode="json"), **trainer_kwargs},
    )


def build_trainer(
    distiller: Distiller,
    train_data: Any,
    val_data: Any,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    augment: BatchAugment | TokenMask | ConsistentAugment | None = None,
    **trainer_kwargs: Any,
) -> Trainer:
    """A :class:`Trainer` for ``distiller`` (``train.device`` checked first); every Trainer distill makes
    comes from here."""
    check_device(config.device)
    return Trainer(
        distiller,
        train_data,
        val_data,
        config=config,
        run_dir=run_dir,
        augment=augment,
        **trainer_kwargs,
    )
