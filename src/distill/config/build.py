"""The only place that turns a validated :class:`Recipe` into objects (datasets, models, terms, trainer)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader

from distill.config.autopair import is_auto, pair_auto_terms
from distill.config.checks import check_on_example, check_taps, example_batch
from distill.config.lmvocab import pair_teacher_vocab, slice_padded_heads
from distill.config.schema import (
    FROM_TEACHER,
    AugmentSpec,
    DistillSpec,
    ModelSpec,
    Recipe,
    ScheduleSpec,
    TermSpec,
    TransferSpec,
)
from distill.config.topk import cache_is_full, data_modes, topk_source
from distill.data import build_dataset
from distill.data.augment import BatchAugment, TokenMask, build_augment, view_augment
from distill.data.base import (
    ImageDataset,
    LabelledDataset,
    LoaderOptions,
    TextData,
    model_inputs,
)
from distill.data.base import eval_loader as eval_loader  # re-exported for the assembly path
from distill.data.tensor import TensorDataset
from distill.data.transfer import TransferSet, make_transfer_set
from distill.data.views import ConsistentAugment
from distill.distiller import Distiller, TeacherSource, Term
from distill.errors import ConfigError, DistillError, first_line, is_allocation_failure
from distill.losses import build_loss
from distill.losses._chunked import ChunkedTokenLoss
from distill.losses.base import contract_of
from distill.models import build_model, student_from_teacher
from distill.models.hf import layer_map, num_layers, same_vocabulary, tokenizer_of
from distill.safe_load import torch_load
from distill.schedules import SCHEDULES, Schedule, weight_at
from distill.tasks import Task, build_task
from distill.teacher_cache import CachedTeacher
from distill.train import Trainer
from distill.train.checkpoint import load_student_weights, student_tensors
from distill.train.config import TrainConfig
from distill.train.distributed import DistInfo, pick_device


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


VALIDATION_SEED = 0  # data.validation carves the same samples in every run (every tuning trial)


def build_data(recipe: Recipe) -> tuple[Any, Any]:
    """The training and evaluation splits: the test split, or with ``data.validation`` samples carved
    from the training set (the test split is then never read)."""
    spec = recipe.data
    train = build_dataset(spec.name, "train", spec.root, **spec.options)
    if spec.validation:
        train, test = carve_validation(train, spec.validation, spec.name)
    else:
        test = build_dataset(spec.name, "test", spec.root, **spec.options)
        check_splits_agree(train, test, spec.name)
    if spec.train_subset:
        train = train.subset(min(spec.train_subset, len(train)), seed=recipe.train.seed)
    if spec.test_subset:
        test = test.subset(min(spec.test_subset, len(test)), seed=0)
    if spec.transfer is not None:
        train = build_transfer(spec.transfer, train, recipe.train.seed)
    options = LoaderOptions(
        spec.num_workers, spec.pin_memory, spec.persistent_workers, spec.prefetch_factor
    )
    for split in (train, test):
        with contextlib.suppress(AttributeError):  # read by make_loader (data/base.py)
            split.loader_options = options
    return train, test


def carve_validation(train: Any, n: int, name: str) -> tuple[Any, Any]:
    """``(rest, validation)``: ``n`` class-balanced samples of ``train`` (seeded with
    ``VALIDATION_SEED``) and the others."""
    if not isinstance(train, TensorDataset):
        raise ConfigError(
            f"data.validation needs an in-memory dataset to carve from, but {name!r} gives a "
            f"{type(train).__name__}; evaluate on its test split (drop data.validation)"
        )
    if not 0 < n < len(train):
        raise ConfigError(
            f"data.validation={n} leaves no training samples in {name!r} ({len(train)}); use fewer, "
            f"e.g. {max(1, len(train) // 6)}"
        )
    keep = train.subset_indices(n, VALIDATION_SEED)
    rest = torch.ones(len(train), dtype=torch.bool)
    rest[keep] = False
    return train.take(rest.nonzero().flatten()), train.take(keep)


def build_transfer(spec: TransferSpec, train: Any, train_seed: int) -> TransferSet:
    """``data.transfer``: the training set split into labelled rows and a transfer set (plus an extra
    dataset's inputs), batched at ``labelled_fraction``."""
    seed = train_seed if spec.seed is None else spec.seed
    extra = None
    if spec.dataset is not None:
        extra = build_dataset(spec.dataset.name, "train", spec.dataset.root, **spec.dataset.options)
        if spec.dataset.subset:
            extra = extra.subset(min(spec.dataset.subset, len(extra)), seed=seed)
    return make_transfer_set(train, spec.labels_per_class, extra, spec.labelled_fraction, seed=seed)


def check_splits_agree(train: Any, test: Any, name: str) -> None:
    """The test split must have the training split's class count, channels and image size."""
    checks = []
    if isinstance(train, LabelledDataset) and isinstance(test, LabelledDataset):
        fix = "relabel them or store the same num_classes/classes metadata in both"
        checks.append(("num_classes", train.num_classes, test.num_classes, fix))
    if isinstance(train, ImageDataset) and isinstance(test, ImageDataset):
        fix = "convert both to the same channel count (grayscale or RGB)"
        checks.append(("in_channels", train.in_channels, test.in_channels, fix))
        checks.append(
            ("image_size", train.image_size, test.image_size, "resize both to the same size")
        )
    for attr, a, b, fix in checks:
        if a is not None and b is not None and a != b:
            show = (lambda v: "x".join(map(str, v))) if attr == "image_size" else str
            raise DistillError(
                f"dataset {name!r}: the train split has {attr} {show(a)} but the test split has "
                f"{show(b)}; both splits need the same {attr}: {fix}"
            )


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


def data_shape(recipe: Recipe, train: Any) -> tuple[int, int]:
    """``(num_classes, in_channels)`` the models are built for: the training split's (see
    :func:`~distill.data.base.model_inputs`)."""
    num_classes, in_channels = model_inputs(train)
    if num_classes is None:
        raise ConfigError(f"dataset {recipe.data.name!r} does not say how many classes it has")
    return num_classes, in_channels


def recipe_task(recipe: Recipe) -> Task:
    """The recipe's task adapter (``task`` + ``task_options``)."""
    return build_task(recipe.task, **recipe.task_options)


def build(recipe: Recipe, data: tuple[Any, Any] | None = None) -> Built:
    """Build data, models and the distiller for ``recipe`` (seeded with ``train.seed``) and check them on
    two training samples (:func:`~distill.config.checks.check_on_example`): everything ``train`` needs."""
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
    student, teacher = build_models(recipe, num_classes, in_channels, "skip" if skip else "load")
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


def prepare_text_data(
    recipe: Recipe, data: tuple[Any, Any], student: nn.Module, teacher: nn.Module | None
) -> None:
    """Text data takes the student's tokenizer; the teacher must read the same token ids."""
    if not all(isinstance(d, TextData) for d in data):
        return
    tokenizer = tokenizer_of(student) or (tokenizer_of(teacher) if teacher is not None else None)
    if tokenizer is None:
        if any(d.tokenizer is None for d in data):
            raise ConfigError(
                f"dataset {recipe.data.name!r} holds text but student {recipe.student.name!r} has no "
                "tokenizer; use a Hugging Face student (hf:FOLDER or from_teacher)"
            )
        return
    if teacher is not None and not same_vocabulary(student, teacher):
        who = "distillation terms need" if recipe.distill.terms else "the teacher needs"
        raise ConfigError(
            f"teacher {recipe.teacher.name!r} and student {recipe.student.name!r} use different "
            f"tokenizers or vocabularies, but {who} the same token ids; use a student built from the "
            "teacher (from_teacher) or one with the teacher's tokenizer"
        )
    for d in data:
        d.set_tokenizer(tokenizer)


def check_device(device: str, where: str = "train.device") -> None:
    """``device`` (``train.device``, or the option named by ``where`` such as ``--device``) names a device
    torch knows and, for CUDA, one that is there."""
    if device == "auto":
        return
    # the fix in the setting's own syntax: train.device=cpu, --device cpu
    use = f"{where}{' ' if where.startswith('-') else '='}"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"{where} {device!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{where} is {device!r} but no CUDA GPU is visible; use {use}auto or cpu")
    try:  # a device type this PyTorch build or machine lacks (mps off Apple, cuda:7 of 1 GPU, xpu)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as err:
        raise ConfigError(
            f"{where} {device!r} is not available here ({first_line(err)}); use {use}auto or cpu"
        ) from None


def resolve_device(device: str, where: str = "--device") -> torch.device:
    """The device ``device`` names (``auto``: CUDA, else MPS, else the CPU), after :func:`check_device`."""
    check_device(device, where)
    return pick_device(device, DistInfo())


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
