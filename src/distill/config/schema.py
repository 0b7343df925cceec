"""Recipe schemas (pydantic v2, ``extra="forbid"``). Names are checked against the registries here, so
``distill validate`` catches a typo without building anything."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator, model_validator

from distill.config.plugins import register_import_paths
from distill.data import DATASETS
from distill.errors import did_you_mean
from distill.losses import LOSSES
from distill.models import MODELS
from distill.models.hf import student_from_teacher
from distill.projectors import PROJECTORS
from distill.registry import Registry, UnknownNameError, check_kwargs
from distill.schedules import SCHEDULES
from distill.tasks import TASKS
from distill.teacher_cache import uncacheable
from distill.train.config import TrainConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


REGISTRIES: dict[str, Registry] = {
    "loss": LOSSES,
    "model": MODELS,
    "dataset": DATASETS,
    "task": TASKS,
    "schedule": SCHEDULES,
    "projector": PROJECTORS,
}


def _lookup(kind: str, name: str) -> Any:
    """Resolve ``name`` in the registry of ``kind``."""
    try:
        return REGISTRIES[kind].get(name)
    except UnknownNameError as err:
        raise ValueError(str(err)) from None


class ScheduleSpec(BaseModel):
    """``{schedule: linear_warmup, value: 8.0, warmup_epochs: 20}``: the other keys go to the schedule."""

    model_config = ConfigDict(extra="allow")
    schedule: str

    @model_validator(mode="after")
    def _check(self) -> ScheduleSpec:
        cls = _lookup("schedule", self.schedule)
        check_kwargs(cls, self.model_extra or {}, what=f"schedule {self.schedule!r}")
        return self


Weight = FiniteFloat | ScheduleSpec  # NaN or inf would poison every step's loss


def _weight(value: Any) -> Any:
    """A mapping is a schedule: validate it as one so its own error (bad option) is the one reported."""
    return ScheduleSpec.model_validate(value) if isinstance(value, dict) else value


# a student built from the teacher (distill.models.hf.student_from_teacher)
FROM_TEACHER = "from_teacher"
LAYER_TAP = re.compile(r"^@(hidden_states|attentions)\.\*$")


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


class AugmentSpec(Strict):
    crop_padding: int = Field(
        0, ge=0, description="random crop after zero padding by this many pixels"
    )
    flip: bool = Field(False, description="random horizontal flip")
    token_mask: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="text: replace each token with the mask token with this probability (teacher and "
        "student read the same masked batch)",
    )


class DataSpec(Strict):
    name: str = Field(
        "fashion_mnist",
        description="registry name (`distill list datasets`) or MODULE:FUNCTION, a factory "
        "f(split, root, **options) in a module listed under plugins",
    )
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    train_subset: int | None = Field(None, gt=0, description="use only this many training samples")
    test_subset: int | None = Field(
        None, gt=0, description="evaluate on only this many test samples"
    )
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    num_workers: int = Field(
        0,
        ge=0,
        description="worker processes decoding items for datasets read per item (image_folder with "
        "lazy: true, hf_dataset images); in-memory datasets ignore it. The batch order "
        "does not depend on it, so a run resumes exactly with any value",
    )
    pin_memory: bool | None = Field(
        None,
        description="page-locked batches for faster GPU copies; default: when CUDA is available",
    )
    persistent_workers: bool = Field(
        False, description="keep the workers alive between passes (needs num_workers > 0)"
    )
    prefetch_factor: int | None = Field(
        None, gt=0, description="batches each worker loads ahead (needs num_workers > 0)"
    )

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        for key in ("persistent_workers", "prefetch_factor"):
            if getattr(self, key) and self.num_workers == 0:
                raise ValueError(
                    f"data.{key}={getattr(self, key)!r} needs worker processes; set data.num_workers "
                    f"(e.g. 4) or remove data.{key}"
                )
        factory = _lookup("dataset", self.name)
        check_kwargs(factory, self.options, what=f"dataset {self.name!r}", skip=("split", "root"))
        return self


class TermSpec(Strict):
    loss: str
    options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the loss"
    )
    student: str | list[str] = "@logits"
    teacher: str | list[str] = "@logits"
    weight: Weight = 1.0
    projector: str | None = None
    name: str | None = None
    layer_map: Literal["uniform", "last"] | list[int] = Field(
        "uniform",
        description="for @hidden_states.* / @attentions.* taps: which teacher layer each student layer "
        "matches (uniform, last, or a list of teacher layers)",
    )

    @field_validator("weight", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> Any:
        return _weight(value)

    @model_validator(mode="after")
    def _check(self) -> TermSpec:
        check_kwargs(_lookup("loss", self.loss), self.options, what=f"loss {self.loss!r}")
        if self.projector is not None:
            _lookup("projector", self.projector)
        starred = [t for t in (self.student, self.teacher) if isinstance(t, str) and "*" in t]
        if starred or any(
            "*" in t
            for side in (self.student, self.teacher)
            if isinstance(side, list)
            for t in side
        ):
            if len(starred) != 2 or not all(LAYER_TAP.match(t) for t in starred):
                raise ValueError(
                    f"layer taps with '*' go on both sides, as @hidden_states.* or @attentions.*; got "
                    f"student {self.student!r}, teacher {self.teacher!r}"
                )
        return self


class DistillSpec(Strict):
    task_weight: Weight = 1.0
    terms: list[TermSpec] = Field(default_factory=list)
    cache_teacher: bool = Field(
        False,
        description="run the frozen teacher over the training set once and reuse its outputs every "
        "epoch (no data augmentation; terms that tap outputs such as @logits)",
    )

    @field_validator("task_weight", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> Any:
        return _weight(value)


SpecT = TypeVar("SpecT", bound=BaseModel)
# recipe sections read after training (distill export, QAT, distill compare): they never change a run
AFTER_TRAINING = ("export", "qat", "compare")


def override(spec: SpecT, given: Mapping[str, Any]) -> SpecT:
    """``spec`` with the fields in ``given`` that are not ``None`` replaced: a keyword argument (a flag
    given on the command line) wins over the recipe's section. Not validated again: the callers check
    what they take."""
    return spec.model_copy(update={k: v for k, v in given.items() if v is not None})


class ExportSpec(Strict):
    """``distill export`` settings (:func:`distill.export.export_run`); its flags override them."""

    format: Literal["onnx"] = Field("onnx", description="export format")
    opset: int | None = Field(
        None, description="ONNX opset (default: the exporter's own; others are converted)"
    )
    int8: bool = Field(False, description="also write an int8 model, student.int8.onnx")
    int8_mode: Literal["static", "dynamic"] | None = Field(
        None,
        description="static (calibrated on training batches) or dynamic (activation ranges per batch); "
        "default: dynamic for models with named inputs (text), static otherwise",
    )
    calibration_batches: int = Field(
        8, ge=1, description="static int8: training batches of 64 inputs it is calibrated on"
    )
    keep_first_last_float: bool | None = Field(
        None,
        description="int8: keep the first and last compute layers in float (default: yes for one "
        "tensor input, no for named inputs)",
    )
    checkpoint: Literal["best", "last"] = Field(
        "best", description="which checkpoint is exported (and fine-tuned by QAT)"
    )
    qat: bool = Field(
        False, description="also write a QAT int8 model, student.qat.int8.onnx (settings: qat:)"
    )
    handback: bool = Field(
        False,
        description="at the end of training, also save the student in its family's own format "
        "(RUN_DIR/hf, RUN_DIR/ultralytics or RUN_DIR/image; `distill handback` does it later)",
    )


class QatSpec(Strict):
    """Quantization-aware training settings (:func:`distill.compress.qat.qat_run`)."""

    epochs: int = Field(1, ge=1, description="fine-tuning epochs with fake quantization")
    lr: float | None = Field(None, gt=0, description="learning rate (default: train.lr / 10)")
    temperature: float = Field(4.0, gt=0, description="kd temperature against the float student")
    keep_float: Literal["first_last"] | list[str] = Field(
        "first_last",
        description="module names left in float, or first_last (the first and last Conv/Linear)",
    )


class CompareSpec(Strict):
    """``distill compare`` settings (:func:`distill.compare.compare`); its flags override them."""

    pipelines: list[str] | None = Field(
        None, description="pipeline names (`distill compare --list`; default: the task's defaults)"
    )
    out: str = Field("runs/compare", description="where the runs and the report go")
    teacher_recipe: str | None = Field(
        None,
        description="train (once, cached) the teacher with this recipe, e.g. fashion_mnist/teacher",
    )
    tiny: bool = Field(False, description="a seconds-long smoke run on a data subset")
    latency_repeats: int = Field(
        50, ge=1, description="timed forward passes per latency cell (after warm-up ones)"
    )
    prune_ratio: float | None = Field(
        None, ge=0, lt=1, description="share of channels pruned (default: to the student's size)"
    )
    sparsity: float | None = Field(
        None, ge=0, lt=1, description="share of weights zeroed (default: to the student's size)"
    )
    finetune: dict[str, Any] = Field(
        default_factory=dict, description="train settings changed for fine-tuning pruned teachers"
    )
    calibration_samples: int = Field(
        512, ge=1, description="training inputs static int8 models are calibrated on"
    )

    @field_validator("finetune")
    @classmethod
    def _train_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        fields = list(TrainConfig.model_fields)
        for key in value:
            if key not in fields:
                raise ValueError(
                    f"finetune: {key!r} is not a train setting.{did_you_mean(str(key), fields)} "
                    f"Allowed: {', '.join(fields)}"
                )
        return value


class Recipe(Strict):
    """A whole run: data, models, distillation terms and training settings, and how the run is
    exported, quantized and compared."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$", description="run name; outputs go to runs/<name> by default"
    )
    description: str = ""
    plugins: list[str] = Field(
        default_factory=list,
        description="modules to import (from sys.path, the current directory or the recipe's folder): "
        "they register extra items, and model/dataset names MODULE:FUNCTION may use them",
    )
    task: str = "classification"
    task_options: dict[str, Any] = Field(default_factory=dict)
    data: DataSpec = Field(default_factory=DataSpec)
    student: ModelSpec
    teacher: ModelSpec | None = None
    distill: DistillSpec = Field(default_factory=DistillSpec)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: str | None = Field(None, description="run directory (default: runs/<name>)")
    export: ExportSpec = Field(
        default_factory=ExportSpec, description="distill export settings (flags override them)"
    )
    qat: QatSpec = Field(
        default_factory=QatSpec, description="quantization-aware training settings"
    )
    compare: CompareSpec = Field(
        default_factory=CompareSpec, description="distill compare settings (flags override them)"
    )

    @model_validator(mode="before")
    @classmethod
    def _plugin_names(cls, data: Any) -> Any:
        """``module:function`` model and dataset names, checked against ``plugins:`` and registered."""
        register_import_paths(data)
        return data

    @field_validator("task")
    @classmethod
    def _known_task(cls, name: str) -> str:
        _lookup("task", name)
        return name

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if self.distill.terms and self.teacher is None:
            raise ValueError(
                "distill.terms need a teacher: add a 'teacher:' section or remove the terms"
            )
        if self.student.name == FROM_TEACHER and self.teacher is None:
            raise ValueError(
                "student.name: from_teacher builds the student from the teacher; add a 'teacher:' section"
            )
        if self.teacher is not None and self.teacher.name == FROM_TEACHER:
            raise ValueError(
                "teacher.name: from_teacher is for students; name the teacher's model (e.g. hf:FOLDER)"
            )
        check_kwargs(_lookup("task", self.task), self.task_options, what=f"task {self.task!r}")
        if self.distill.cache_teacher:
            self._check_cache_teacher()
        return self

    def _check_cache_teacher(self) -> None:
        """The cache holds one teacher output per training sample: it needs the same input every epoch
        and terms that read the task's outputs."""
        if not self.distill.terms:
            raise ValueError("distill.cache_teacher: there are no terms to feed; remove it")
        augment = self.data.augment.model_dump(exclude_defaults=True)
        if augment:
            name, value = next(iter(augment.items()))
            raise ValueError(
                f"distill.cache_teacher needs the same inputs every epoch, but data.augment.{name} "
                f"({value}) changes them; turn one of the two off"
            )
        if _lookup("task", self.task).augments_in_loader:
            raise ValueError(
                f"distill.cache_teacher: the {self.task} task's loader augments its inputs, so the "
                "teacher sees new inputs every epoch; turn cache_teacher off"
            )
        per_token = _lookup("task", self.task).per_token_outputs
        for i, term in enumerate(self.distill.terms):
            taps = [term.teacher] if isinstance(term.teacher, str) else term.teacher
            reason = uncacheable(taps, per_token, self.task)
            if reason is not None:
                where = f"distill.terms.{i}.teacher taps"
                reason = reason.replace("it taps its", f"{where} the").replace("it taps", where)
                raise ValueError(f"distill.cache_teacher {reason}")

    @property
    def run_dir(self) -> str:
        return self.output or f"runs/{self.name}"
