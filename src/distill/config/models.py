"""A recipe's models: student and teacher built from their specs (``from_teacher`` cut from the teacher),
their weights loaded from a run, a ``.safetensors`` or a ``.pt`` file, and the warning for a student whose
BatchNorm statistics will not settle in the run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from torch import nn
from torch.utils.data import DataLoader

from distill.config.load import weights_not_found
from distill.config.schema import (
    FROM_TEACHER,
    ModelSpec,
    Recipe,
)
from distill.data.base import eval_loader as eval_loader  # re-exported for the assembly path
from distill.errors import ConfigError, DistillError, first_line, is_allocation_failure
from distill.models import build_model, student_from_teacher
from distill.safe_load import torch_load
from distill.train.checkpoint import load_student_weights, student_tensors

if TYPE_CHECKING:
    from distill.config.build import Built


def load_weights(model: nn.Module, weights: str, role: str) -> None:
    """Load ``weights`` into ``model``: a distill run dir, a ``.safetensors`` file or a ``.pt``/``.pth`` file.

    ``.pt`` files are read with ``torch.load(weights_only=True)``: no arbitrary unpickling, ever.
    """
    path = Path(weights)
    if not path.exists():
        raise weights_not_found(weights, role)
    try:
        if path.is_dir():
            if not (path / "checkpoints").exists() and (path / "manifest.json").is_file():
                raise ConfigError(
                    f"{role} weights {weights} is a run's checkpoints folder; give the run folder "
                    f"{path.parent} (its best checkpoint is used) or one .safetensors file"
                )
            try:
                load_student_weights(path, model, "best")
            except DistillError as err:
                raise DistillError(f"{role} weights {weights}: {err}") from None
            return
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                state = load_file(str(path))
            except (SafetensorError, OSError) as err:
                if _torch_save_file(path):
                    raise ConfigError(
                        f"{role} weights {path} is a torch.save file, not safetensors; rename it "
                        "to .pt (read with weights_only=True) or re-save it with "
                        "safetensors.torch.save_file"
                    ) from None
                raise DistillError(
                    f"{role} weights {path} are corrupt or truncated ({first_line(err)}); "
                    "re-save them with safetensors.torch.save_file or train the model again"
                ) from None
            if any(k.startswith("model.student.") for k in state):  # a distill checkpoint file
                state = student_tensors(state)
        elif path.suffix in (".pt", ".pth", ".bin"):
            fix = "re-save model.state_dict() as .safetensors or a plain .pt state dict"
            state = torch_load(path, f"{role} weights", fix)
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


def _torch_save_file(path: Path) -> bool:
    """Whether ``path`` starts like a ``torch.save`` file: a zip archive or a bare pickle."""
    try:
        with open(path, "rb") as f:
            start = f.read(4)
    except OSError:
        return False
    return start == b"PK\x03\x04" or (
        start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    )


def build_model_spec(spec: ModelSpec, num_classes: int, in_channels: int, role: str) -> nn.Module:
    try:
        # options may give num_classes: a teacher of another tokenizer (config/lmvocab.py)
        sizes = {"num_classes": num_classes, "in_channels": in_channels}
        model = build_model(spec.name, **{**sizes, **spec.options})
    except DistillError as err:  # say whose options they are: student and teacher may share a model
        raise (ConfigError if isinstance(err, ConfigError) else DistillError)(
            f"{role}: {err}"
        ) from None
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"{role}: model {spec.name!r} rejected options {spec.options} ({first_line(err)}); "
            "fix the option values"
        ) from None
    except (RuntimeError, MemoryError, OverflowError) as err:  # sizes beyond memory or int64
        if not (isinstance(err, OverflowError) or is_allocation_failure(err)):
            raise
        raise ConfigError(
            f"{role}.options {spec.options} need more memory than this machine has "
            f"({first_line(err)}); use smaller sizes (channels, hidden, image_size) for {spec.name!r}"
        ) from None
    if spec.weights:
        load_weights(model, spec.weights, role)
    return model


TeacherChoice = Literal["load", "skip"] | nn.Module


def build_models(
    recipe: Recipe,
    num_classes: int,
    in_channels: int,
    teacher: TeacherChoice = "load",
    student_weights: bool = True,
) -> tuple[nn.Module, nn.Module | None]:
    """Student and teacher. ``teacher``: ``"load"`` builds it with its weights, ``"skip"`` leaves it out
    (``None``), a module is used as given. ``student_weights=False`` leaves out the student's ``weights``
    (a checkpoint replaces them). A ``from_teacher`` student is cut from the teacher once its weights are in.
    """
    if recipe.student.name != FROM_TEACHER:  # the student first: seeded runs draw its weights first
        student = build_student(recipe, num_classes, in_channels, weights=student_weights)
        return student, _teacher_for(recipe, num_classes, in_channels, teacher)
    given = _teacher_for(recipe, num_classes, in_channels, teacher)
    student = build_student(recipe, num_classes, in_channels, given, weights=student_weights)
    return student, given


def _teacher_for(
    recipe: Recipe, num_classes: int, in_channels: int, teacher: TeacherChoice
) -> nn.Module | None:
    if isinstance(teacher, nn.Module):
        return teacher
    if teacher == "skip":
        return None
    return build_teacher(recipe, num_classes, in_channels)


def build_teacher(
    recipe: Recipe, num_classes: int, in_channels: int, weights: bool = True
) -> nn.Module | None:
    """The recipe's teacher (``None`` without one); ``weights=False``: the architecture alone."""
    if recipe.teacher is None:
        return None
    spec = recipe.teacher if weights else recipe.teacher.model_copy(update={"weights": None})
    return build_model_spec(spec, num_classes, in_channels, "teacher")


def build_student(
    recipe: Recipe,
    num_classes: int,
    in_channels: int,
    teacher: nn.Module | None = None,
    weights: bool = True,
) -> nn.Module:
    """The recipe's student; ``from_teacher`` cuts it from ``teacher`` (the recipe's teacher architecture
    when none is given). ``weights=False`` leaves out the student's own ``weights`` file."""
    spec = recipe.student if weights else recipe.student.model_copy(update={"weights": None})
    if spec.name != FROM_TEACHER:
        return build_model_spec(spec, num_classes, in_channels, "student")
    assert recipe.teacher is not None  # the schema requires it
    if teacher is None:
        teacher = build_teacher(recipe, num_classes, in_channels, weights=False)
    try:
        student = student_from_teacher(teacher, **spec.options)
    except DistillError as err:
        raise DistillError(f"student: {err}") from None
    if spec.weights:
        load_weights(student, spec.weights, "student")
    return student


SLOW_BN_MOMENTUM = 0.05  # below this, a BatchNorm's running statistics need many batches to settle


def slow_batchnorm_warning(built: Built) -> str | None:
    """One line when the student's BatchNorm running statistics will still be far from the data's at
    the end of training, else None.

    A BatchNorm's running mean and variance move ``momentum`` of the way to each training batch's; after
    ``n`` batches ``(1 - momentum) ** n`` of their initial values remain, and evaluation normalises with
    them. With the usual 0.1 that is gone within ~30 batches; torchvision's MobileNetV3 (and EfficientNet)
    use 0.01, which needs ~300 (``3 / momentum``: under 5 % left). The warning names the model, the
    momentum and the batches needed when a student has a momentum under ``SLOW_BN_MOMENTUM`` and the run
    trains fewer than ``3 / momentum`` batches. Nothing is changed."""
    momenta = [
        m.momentum
        for m in built.student.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    slow = min((m for m in momenta if m is not None), default=None)  # None: a cumulative average
    if slow is None or slow >= SLOW_BN_MOMENTUM:
        return None
    cfg = built.recipe.train
    try:
        data = built.train_data
        per_epoch = (
            len(data) if isinstance(data, DataLoader) else math.ceil(len(data) / cfg.batch_size)
        )
    except TypeError:  # a dataset without a length: no estimate
        return None
    batches = per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        batches = min(batches, cfg.max_steps)
    needed = math.ceil(3 / slow)
    if batches >= needed:
        return None
    left = 100 * (1 - slow) ** batches
    return (
        f"student {built.recipe.student.name!r} has BatchNorm momentum {slow:g} and this run trains "
        f"{batches} batches: the running statistics will still hold {left:.0f}% of their initial values, so "
        f"evaluation (and the best checkpoint) will be poor; train for >= {needed} batches "
        "(train.epochs, train.max_steps) or use a model whose BatchNorm momentum is 0.1"
    )
