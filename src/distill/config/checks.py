"""Build-time checks of a recipe's objects: taps that name modules, and one forward pass of student, teacher
and every term on two training samples before anything trains or is written (``check_on_example``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.config.schema import Recipe
from distill.distiller import Distiller
from distill.errors import DistillError, is_allocation_failure


def first_line(err: BaseException) -> str:
    """The first sentence of an error's first line, at most 120 characters."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line.split(". ")[0][:120]


def check_taps(model: nn.Module, taps: str | list[str], where: str) -> None:
    """Module taps (not ``@outputs``) must name modules of ``model``; the error says which term's."""
    from distill.taps import FeatureTaps

    names = [t for t in ([taps] if isinstance(taps, str) else taps) if not t.startswith("@")]
    try:
        FeatureTaps(model, names)
    except DistillError as err:
        raise DistillError(f"{where}: {err}") from None


def example_batch(data: Any, n: int = 2) -> Any:
    """The first ``n`` samples of ``data`` (a dataset or a DataLoader) as one batch."""
    from torch.utils.data import DataLoader

    from distill.data import identity_collate

    if not isinstance(data, DataLoader):
        if len(data) == 0:
            raise DistillError("the training data is empty; point the recipe at data with samples")
        if callable(getattr(data, "loader", None)):  # the dataset's own batching (text: tokenising)
            data = data.loader(min(n, len(data)))
        else:
            data = DataLoader(data, batch_size=min(n, len(data)), collate_fn=identity_collate)
    for batch in data:
        return batch
    raise DistillError("the training data is empty; point the recipe at data with samples")


def _run(role: str, name: str, inputs: Any, forward: Any) -> dict[str, torch.Tensor]:
    try:
        return forward()
    except DistillError as err:
        raise DistillError(f"{role}: {err}") from None
    except (RuntimeError, ValueError, TypeError, IndexError, MemoryError, OverflowError) as err:
        shape = list(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        if is_allocation_failure(err):
            raise DistillError(
                f"{role} {name!r} needs more memory than this machine has for two samples {shape} "
                f"({first_line(err)}); use smaller model options or images"
            ) from None
        raise DistillError(
            f"{role} {name!r} cannot run on the data's inputs {shape} ({first_line(err)}); "
            "check the model's options (image_size, in_channels) against the data"
        ) from None


def check_on_example(distiller: Distiller, train: Any, recipe: Recipe) -> None:
    """Run the student (and teacher) once on two training samples, before anything trains or is written.

    Catches at build time what would otherwise fail at the first step, after an ``--overwrite`` has
    cleared the earlier run: models that cannot take the data's inputs, class counts that differ between
    the models and the data, unknown task outputs in taps, feature shapes that differ without a projector,
    and projectors that cannot map them. Weights, RNG state and train/eval modes are left as they were.
    """
    from distill.distiller import _extras_for, _pick, _teacher_pick
    from distill.projectors import build_projector
    from distill.taps import FeatureTaps

    task, side = distiller.task, distiller.trainable()
    batch = task.split(example_batch(train))
    param = next(side.student.parameters(), None)
    if param is not None:
        batch = batch.to(param.device)
    was_training = side.training
    teacher_name = recipe.teacher.name if recipe.teacher else "teacher"
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            side.eval()
            with FeatureTaps(side.student, side.student_taps) as taps:
                outputs = _run(
                    "student",
                    recipe.student.name,
                    batch.inputs,
                    lambda: task.forward(side.student, batch.inputs),
                )
            teacher_outputs = (
                _run(
                    "teacher",
                    teacher_name,
                    batch.inputs,
                    lambda: distiller.source.outputs(batch, distiller.teacher_taps),
                )
                if distiller.source is not None and distiller.teacher is not None
                else {}
            )
            _check_class_counts(task, train, recipe, outputs, teacher_outputs)
            for term, name, projector in zip(side.terms, side.names, side.projectors, strict=True):
                extras = _extras_for(term.loss, batch, name)  # boxes, labels, indices it declares
                s = _pick(term.student, outputs, taps, "student")
                t = _teacher_pick(term.teacher, teacher_outputs)
                one_s, one_t = (s[0], t[0]) if isinstance(s, list) else (s, t)
                if isinstance(term.projector, str):
                    projector = build_projector(term.projector, one_s.shape, one_t.shape)
                elif (
                    getattr(term.loss, "needs_same_shape", True)
                    and not isinstance(s, list)
                    and not isinstance(t, list)
                    and isinstance(projector, nn.Identity)
                    and s.shape != t.shape
                ):
                    raise DistillError(
                        f"term {name!r}: student {term.student!r} has shape {tuple(s.shape)} but teacher "
                        f"{term.teacher!r} has {tuple(t.shape)}; add a projector (conv1x1 for feature "
                        "maps, linear for vectors)"
                    )
                _dry_run(term.loss, name, projector, s, t, extras)
    finally:
        side.train(was_training)


def _dry_run(loss: nn.Module, name: str, projector: nn.Module, s: Any, t: Any, extras: Any) -> None:
    """Call the loss once on the example's tensors, so what it refuses (a YOLO26 head for ``ld``, maps it
    cannot pair) fails before ``--overwrite`` clears a run, not at the first step. Losses with parts built
    from data (``build``) are checked when the distiller builds them."""
    if callable(getattr(loss, "build", None)):
        return
    s = [projector(x) for x in s] if isinstance(s, list) else projector(s)
    try:
        loss(s, t, **extras)
    except DistillError as err:
        raise DistillError(f"term {name!r}: {err}") from None
    except (ValueError, TypeError, RuntimeError, IndexError) as err:
        line = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise DistillError(f"term {name!r}: {line}") from None


def _check_class_counts(
    task: Any,
    data: Any,
    recipe: Recipe,
    outputs: dict[str, torch.Tensor],
    teacher_outputs: dict[str, torch.Tensor],
) -> None:
    """Classification: student and teacher give one score per class of the data."""
    num_classes = getattr(data, "num_classes", None)
    if (
        getattr(task, "name", None) not in ("classification", "text_classification")
        or not num_classes
    ):
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
