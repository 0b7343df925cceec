"""Build-time checks of a recipe's objects: taps that name modules, and one forward pass of student, teacher
and every term on two training samples before anything trains or is written (``check_on_example``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.config.schema import Recipe
from distill.data.base import eval_loader, model_inputs
from distill.distiller import Distiller, ExampleRunError
from distill.errors import DistillError
from distill.taps import FeatureTaps
from distill.tasks.base import Task


def check_taps(model: nn.Module, taps: str | list[str], where: str) -> None:
    """Module taps (not ``@outputs``) must name modules of ``model``; the error says which term's."""
    names = [t for t in ([taps] if isinstance(taps, str) else taps) if not t.startswith("@")]
    try:
        FeatureTaps(model, names)
    except DistillError as err:
        raise DistillError(f"{where}: {err}") from None


def example_batch(data: Any, n: int = 2) -> Any:
    """The first ``n`` samples of ``data`` (a dataset or a DataLoader) as one batch."""
    from torch.utils.data import DataLoader

    if not isinstance(data, DataLoader) and len(data) == 0:
        raise DistillError("the training data is empty; point the recipe at data with samples")
    size = n if isinstance(data, DataLoader) else min(n, len(data))
    for batch in eval_loader(data, size):
        return batch
    raise DistillError("the training data is empty; point the recipe at data with samples")


def check_on_example(distiller: Distiller, train: Any, recipe: Recipe) -> None:
    """Run the student (and teacher) once on two training samples, before anything trains or is written.

    This is :meth:`Distiller.setup` in its dry-run mode (the one place that knows projectors and term
    shapes) plus the recipe's own checks: it catches at build time what would otherwise fail at the first
    step, after an ``--overwrite`` has cleared the earlier run: models that cannot take the data's inputs,
    class counts that differ between the models and the data, unknown task outputs in taps, feature shapes
    that differ without a projector, and projectors that cannot map them. Weights, RNG state and
    train/eval modes are left as they were.
    """

    task = distiller.task
    try:
        distiller.setup(
            example_batch(train),
            dry_run=True,
            check_outputs=lambda s, t: _check_class_counts(task, train, recipe, s, t),
        )
    except ExampleRunError as err:
        name = recipe.student.name if err.role == "student" else _teacher_name(recipe)
        if err.allocation:
            raise DistillError(
                f"{err.role} {name!r} needs more memory than this machine has for two samples "
                f"{err.inputs} ({err.reason}); use smaller model options or images"
            ) from None
        raise DistillError(
            f"{err.role} {name!r} cannot run on the data's inputs {err.inputs} ({err.reason}); "
            "check the model's options (image_size, in_channels) against the data"
        ) from None


def _teacher_name(recipe: Recipe) -> str:
    return recipe.teacher.name if recipe.teacher else "teacher"


def _check_class_counts(
    task: Task,
    data: Any,
    recipe: Recipe,
    outputs: dict[str, torch.Tensor],
    teacher_outputs: dict[str, torch.Tensor],
) -> None:
    """Classification: student and teacher give one score per class of the data."""
    num_classes, _ = model_inputs(data)
    if not task.classifies or not num_classes:
        return
    pairs = [("student", recipe.student.name, outputs.get("logits"))]
    if recipe.teacher is not None:
        pairs.append(("teacher", recipe.teacher.name, teacher_outputs.get("@logits")))
    for role, name, logits in pairs:
        if isinstance(logits, torch.Tensor) and logits.shape[-1] != num_classes:
            raise DistillError(
                f"{role} {name!r} gives {logits.shape[-1]} class scores but the data has "
                f"{num_classes} classes; build its head from num_classes (check the model and its weights)"
            )
