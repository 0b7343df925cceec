"""The only place that turns a validated :class:`Recipe` into objects (datasets, models, terms, trainer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.config.schema import ModelSpec, Recipe, ScheduleSpec, TermSpec
from distill.data import BatchAugment, build_dataset
from distill.distiller import Distiller, Term
from distill.errors import ConfigError, DistillError
from distill.losses import build_loss
from distill.models import build_model
from distill.schedules import SCHEDULES, Schedule
from distill.tasks import build_task
from distill.train import Trainer
from distill.train.checkpoint import load_student_weights, model_tensors


@dataclass
class Built:
    """Everything a recipe describes, ready to train."""

    recipe: Recipe
    train_data: Any
    test_data: Any
    student: nn.Module
    teacher: nn.Module | None
    distiller: Distiller
    augment: BatchAugment | None


def build_weight(weight: float | ScheduleSpec) -> float | Schedule:
    if isinstance(weight, ScheduleSpec):
        return SCHEDULES.get(weight.schedule)(**(weight.model_extra or {}))
    return float(weight)


def build_data(recipe: Recipe) -> tuple[Any, Any]:
    spec = recipe.data
    train = build_dataset(spec.name, "train", spec.root, **spec.options)
    test = build_dataset(spec.name, "test", spec.root, **spec.options)
    if spec.train_subset:
        train = train.subset(min(spec.train_subset, len(train)), seed=recipe.train.seed)
    if spec.test_subset:
        test = test.subset(min(spec.test_subset, len(test)), seed=0)
    return train, test


def load_weights(model: nn.Module, weights: str, role: str) -> None:
    """Load ``weights`` into ``model``: a distill run dir, a ``.safetensors`` file or a ``.pt``/``.pth`` file.

    ``.pt`` files are read with ``torch.load(weights_only=True)``: no arbitrary unpickling, ever.
    """
    path = Path(weights)
    if not path.exists():
        raise ConfigError(
            f"{role} weights {weights!r} not found; train it first (distill train ...) or fix the path"
        )
    try:
        if path.is_dir():
            load_student_weights(path, model, "best")
            return
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
            if any(k.startswith("model.student.") for k in state):  # a distill checkpoint file
                state = model_tensors(state, "model.student.")
        elif path.suffix in (".pt", ".pth", ".bin"):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - anything that needs unpickling is refused
                raise DistillError(
                    f"{role} weights {path} cannot be loaded safely (weights_only=True refused it: "
                    f"{str(err).splitlines()[0][:120]}); re-save them as a plain state_dict or .safetensors"
                ) from None
            if isinstance(state, dict) and isinstance(
                state.get("state_dict", state.get("model")), dict
            ):
                state = state.get("state_dict", state.get("model"))
            if not isinstance(state, dict):
                raise DistillError(
                    f"{role} weights {path} hold a {type(state).__name__}, not a state dict; "
                    "save model.state_dict() instead"
                )
        else:
            raise ConfigError(
                f"{role} weights {path}: unknown format; use a run dir, .safetensors, .pt or .pth"
            )
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()
        detail = " ".join(line.strip() for line in first[1:3])[:240]
        raise DistillError(
            f"{role} weights {weights} do not fit the {role} model ({detail}); check the model name, "
            "its options and num_classes"
        ) from None


def build_model_spec(spec: ModelSpec, num_classes: int, in_channels: int, role: str) -> nn.Module:
    model = build_model(spec.name, num_classes=num_classes, in_channels=in_channels, **spec.options)
    if spec.weights:
        load_weights(model, spec.weights, role)
    return model


def build_term(spec: TermSpec) -> Term:
    return Term(
        loss=build_loss(spec.loss, **spec.options),
        student=spec.student,
        teacher=spec.teacher,
        weight=build_weight(spec.weight),
        projector=spec.projector,
        name=spec.name or spec.loss,
    )


def build(recipe: Recipe, data: tuple[Any, Any] | None = None) -> Built:
    """Build data, models and the distiller for ``recipe`` (seeded with ``train.seed``)."""
    torch.manual_seed(recipe.train.seed)
    train, test = data or build_data(recipe)
    num_classes = getattr(train, "num_classes", None)
    in_channels = getattr(train, "in_channels", 3)
    if num_classes is None:
        raise ConfigError(f"dataset {recipe.data.name!r} does not say how many classes it has")
    student = build_model_spec(recipe.student, num_classes, in_channels, "student")
    teacher = None
    if recipe.teacher is not None:
        teacher = build_model_spec(recipe.teacher, num_classes, in_channels, "teacher")
    task = build_task(recipe.task, **recipe.task_options)
    terms = [build_term(t) for t in recipe.distill.terms]
    distiller = Distiller(
        student,
        task,
        teacher=teacher,
        terms=terms,
        task_weight=build_weight(recipe.distill.task_weight),
    )
    aug = BatchAugment(recipe.data.augment.crop_padding, recipe.data.augment.flip)
    return Built(recipe, train, test, student, teacher, distiller, aug if aug.enabled else None)


def make_trainer(built: Built, run_dir: str | Path | None = None, **trainer_kwargs: Any) -> Trainer:
    recipe = built.recipe
    return Trainer(
        built.distiller,
        built.train_data,
        built.test_data,
        config=recipe.train,
        run_dir=run_dir or recipe.run_dir,
        augment=built.augment,
        **trainer_kwargs,
    )
