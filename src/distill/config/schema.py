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
from distill.models import MODELS, student_from_teacher
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


# a student built from the teacher (distill.models.student_from_teacher: gpt or Hugging Face)
FROM_TEACHER = "from_teacher"
# a feature term's taps picked from the models' stages (distill.config.autopair)
AUTO = "auto"
AUTO_INPUTS = ("maps", "maps_list")
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
    resized_crop: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="random resized crop: the smallest crop area as a fraction of the image (e.g. 0.35; "
        "aspect 3/4 to 4/3, resized back); 0 = off",
    )
    randaugment: int = Field(
        0,
        ge=0,
        le=4,
        description="RandAugment-style ops per sample (geometric and photometric); 0 = off",
    )
    randaugment_magnitude: float = Field(
        9.0, ge=0.0, le=10.0, description="RandAugment magnitude M in [0, 10] for every op"
    )
    mixup: float = Field(
        0.0, ge=0.0, le=10.0, description="mixup Beta alpha (e.g. 0.2-1.0); mixed targets; 0 = off"
    )
    cutmix: float = Field(
        0.0, ge=0.0, le=10.0, description="cutmix Beta alpha (e.g. 1.0); mixed targets; 0 = off"
    )
    mix_prob: float = Field(
        1.0, ge=0.0, le=1.0, description="share of batches mixed when mixup or cutmix is on"
    )

    @property
    def views(self) -> bool:
        """Per-sample ops that need :class:`~distill.data.views.ViewAugment`."""
        return bool(self.resized_crop or self.randaugment)

    @property
    def mixes(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mix_prob > 0


class TransferDataSpec(Strict):
    """An extra dataset whose inputs join the transfer set (its labels are never read)."""

    name: str = Field(description="registry name (`distill list datasets`) or MODULE:FUNCTION")
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    subset: int | None = Field(None, gt=0, description="use only this many of its samples")

    @model_validator(mode="after")
    def _check(self) -> TransferDataSpec:
        factory = _lookup("dataset", self.name)
        check_kwargs(factory, self.options, what=f"dataset {self.name!r}", skip=("split", "root"))
        return self


class TransferSpec(Strict):
    """A transfer set (Hinton et al. 2015): distillation terms read every row, the task loss only the
    labelled ones (docs/recipes.md, "Transfer sets")."""

    labels_per_class: int | None = Field(
        None,
        gt=0,
        description="keep the labels of this many training samples per class; the other training "
        "samples join the transfer set without their labels",
    )
    dataset: TransferDataSpec | None = Field(
        None, description="an extra dataset (training split) whose inputs join the transfer set"
    )
    labelled_fraction: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="share of each training batch taken from the labelled set (cycled when it runs "
        "out); default: the sets' own proportion",
    )
    seed: int | None = Field(
        None,
        ge=0,
        description="which samples keep their labels (labels_per_class; default: train.seed, so they "
        "are the ones data.train_subset keeps with the same seed)",
    )

    @model_validator(mode="after")
    def _check(self) -> TransferSpec:
        if self.labels_per_class is None and self.dataset is None:
            raise ValueError(
                "data.transfer needs labels_per_class (the rest of the training set is used without "
                "labels) or dataset (extra unlabelled data), or both"
            )
        return self


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
    validation: int | None = Field(
        None,
        gt=0,
        description="evaluate on this many samples carved from the training set (class-balanced, the "
        "same ones every run) instead of the test split, which is then never read (distill tune)",
    )
    transfer: TransferSpec | None = Field(
        None,
        description="a transfer set: data for the distillation terms whose labels are not used",
    )
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
    chunk_size: int | None = Field(
        None,
        ge=1,
        description="causal LMs, token losses on @logits (forward_kl, generalized_jsd...): compute the "
        "term from the last hidden states and the output heads, chunk_size valid tokens at a time, "
        "never the teacher's (B, T, V) logits nor (N, V) log-probabilities for backward; the same "
        "value and gradients as without (docs/lm_losses.md)",
    )

    @field_validator("weight", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> Any:
        return _weight(value)

    @model_validator(mode="after")
    def _check(self) -> TermSpec:
        check_kwargs(_lookup("loss", self.loss), self.options, what=f"loss {self.loss!r}")
        if AUTO in (self.student, self.teacher):
            self._check_auto()
        if self.projector is not None:
            _lookup("projector", self.projector)
        if self.chunk_size is not None:
            self._check_chunked()
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

    def _check_chunked(self) -> None:
        """The chunked path computes a dense token loss from hidden states and head weights."""
        if not callable(getattr(_lookup("loss", self.loss), "chunked", None)):
            raise ValueError(
                f"chunk_size {self.chunk_size}: loss {self.loss!r} has no chunked path; use a token "
                "loss on @logits (forward_kl, reverse_kl, generalized_jsd, symmetric_kl, skew_kl, "
                "skew_reverse_kl, tvd) or remove chunk_size"
            )
        if self.student != "@logits" or self.teacher != "@logits" or self.projector is not None:
            raise ValueError(
                f"chunk_size {self.chunk_size} replaces the term's @logits by hidden states and head "
                f"weights, but it taps student {self.student!r}, teacher {self.teacher!r} (projector "
                f"{self.projector!r}); keep @logits on both sides and no projector, or remove chunk_size"
            )

    def _check_auto(self) -> None:
        if self.student != self.teacher:
            raise ValueError(
                f"auto pairing picks both sides together; write student: auto and teacher: auto "
                f"(got student {self.student!r}, teacher {self.teacher!r})"
            )
        inputs = LOSSES.meta(self.loss).get("inputs")
        if inputs not in AUTO_INPUTS:
            raise ValueError(
                f"student/teacher: auto pairs feature maps, but loss {self.loss!r} reads {inputs}; "
                "name its taps (e.g. @logits, pool), or use a feature-map loss (fitnet, at, reviewkd)"
            )


class TopKCacheSpec(Strict):
    """``distill.topk_cache``: the teacher's top-k log-probabilities per token of the training text, kept
    in a folder and reused by every run that names it (:mod:`distill.topk`; format in docs/lm.md)."""

    dir: str = Field(
        description="the cache folder: filled by the first run (with the teacher), read by the next "
        "ones (no teacher loaded); refused when made for another teacher, tokenizer, data or settings"
    )
    k: int = Field(8, ge=1, description="log-probabilities kept per token (the largest k)")
    dtype: Literal["float16", "float32"] = Field(
        "float16", description="storage type of the log-probabilities (ids are int32)"
    )
    capture_temperature: float = Field(
        1.0, gt=0, description="temperature of the stored log-probabilities; losses re-temper them"
    )
    shard_samples: int = Field(1024, ge=1, description="training samples per shard file")


class DataModeSpec(Strict):
    """``distill.data_mode``: where a language-model step's tokens come from, chosen per step
    (:mod:`distill.lm_modes`)."""

    mode: Literal["teacher_forced", "on_policy", "replay", "seq_kd"] = Field(
        "on_policy",
        description="teacher_forced (dataset text), on_policy (student samples with probability lam), "
        "replay (on_policy reusing a buffer of samples), seq_kd (the teacher's completions; "
        "across tokenizers as text)",
    )
    lam: float = Field(
        1.0, ge=0, le=1, description="on_policy/replay: share of steps on the student's samples"
    )
    prompt_tokens: int = Field(
        8, ge=1, description="tokens of each row kept as the prompt; the rest of the row is sampled"
    )
    temperature: float = Field(
        1.0, gt=0, description="sampling temperature (a loss's temperature is its own option)"
    )
    replay_size: int = Field(256, ge=1, description="replay: sampled rows kept for reuse")
    replay_ratio: float = Field(
        0.5, ge=0, le=1, description="replay: share of sample steps that reuse the buffer"
    )

    @model_validator(mode="after")
    def _fields_of_the_mode(self) -> DataModeSpec:
        """A field changed from its default for a mode that never reads it is a mistake, not a no-op."""
        for name, modes in DATA_MODE_FIELDS.items():
            value = getattr(self, name)
            if self.mode not in modes and value != type(self).model_fields[name].default:
                raise ValueError(
                    f"{name}={value} is read only by mode {' or '.join(modes)}, not "
                    f"{self.mode}; remove {name} or set mode: {modes[0]}"
                )
        return self


# the fields of DataModeSpec that only some modes read
DATA_MODE_FIELDS: dict[str, tuple[str, ...]] = {
    "lam": ("on_policy", "replay"),
    "prompt_tokens": ("on_policy", "replay", "seq_kd"),
    "temperature": ("on_policy", "replay", "seq_kd"),
    "replay_size": ("replay",),
    "replay_ratio": ("replay",),
}


class DistillSpec(Strict):
    task_weight: Weight = 1.0
    terms: list[TermSpec] = Field(default_factory=list)
    cache_teacher: bool = Field(
        False,
        description="run the frozen teacher over the training set once and reuse its outputs every "
        "epoch (no data augmentation unless cache_views is set; terms that tap outputs such as @logits)",
    )
    cache_views: int = Field(
        0,
        ge=0,
        le=64,
        description="with cache_teacher and per-sample data.augment: augmented views stored per training "
        "sample (their parameters and the teacher's outputs, in a verified file reused across runs); "
        "each epoch the student reads one of them. Mixup/cutmix are refused (not exact)",
    )
    cache_topk: int = Field(
        0,
        ge=0,
        description="with cache_views: keep only the teacher's top-k log-probabilities per view and the "
        "rest's mass (spread evenly over the other classes when read back); 0 = the full logits",
    )
    topk_cache: TopKCacheSpec | None = Field(
        None,
        description="language models: keep the teacher's top-k log-probabilities per token on disk "
        "(a cache for many runs; no teacher in memory once it is filled)",
    )
    data_mode: DataModeSpec | None = Field(
        None,
        description="language models: train on dataset text, the student's samples (on-policy, "
        "replay) or the teacher's completions (seq_kd), chosen per step",
    )

    @field_validator("task_weight", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> Any:
        return _weight(value)


def _tap_list(side: str | list[str]) -> list[str]:
    return [side] if isinstance(side, str) else list(side)


SpecT = TypeVar("SpecT", bound=BaseModel)
# recipe sections read outside training (distill export, QAT, distill compare, distill tune): they never
# change a run
AFTER_TRAINING = ("export", "qat", "compare", "tune")
# the recipe sections a tune parameter may set (not the run's name, output or these after-training ones)
TUNABLE_SECTIONS = ("task_options", "data", "student", "teacher", "distill", "train")


def override(spec: SpecT, given: Mapping[str, Any]) -> SpecT:
    """``spec`` with the fields in ``given`` that are not ``None`` replaced: a keyword argument (a flag
    given on the command line) wins over the recipe's section. Not validated again: the callers check
    what they take."""
    return spec.model_copy(update={k: v for k, v in given.items() if v is not None})


class ExportSpec(Strict):
    """``distill export`` settings (:func:`distill.export.export_run`); its flags override them."""

    format: Literal["onnx", "coreml"] = Field(
        "onnx",
        description="export format: onnx, or coreml (student.onnx and also student.mlpackage, checked "
        "but run only on macOS)",
    )
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
    select: bool = Field(
        False,
        description="also make float16, int8 static/dynamic and per-layer mixed files and pick, per "
        "target, the fastest within the accuracy budget (export.json: selection)",
    )
    targets: list[str] = Field(
        default_factory=lambda: ["onnxruntime"],
        min_length=1,
        description="runtimes the selection times the files on: onnxruntime, openvino, "
        "onnxruntime-cuda, onnxruntime-tensorrt",
    )
    budget: float = Field(
        1.0, ge=0, description="selection: points of the primary metric a file may lose"
    )
    select_batch: int = Field(1, ge=1, description="selection: batch size the files are timed at")
    select_threads: int = Field(
        1, ge=0, description="selection: intra-op threads the files are timed with (0: all cores)"
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
    bench_results: list[str] = Field(
        default_factory=list,
        description="`distill bench --out` JSON files merged into the report (rows matched by the "
        "file's SHA-256): latencies timed on other machines",
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


class TuneParam(Strict):
    """One searched value: a path into the recipe and a range (``low``/``high``, ``log``) or ``choices``."""

    path: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+$",
        description="dotted path of the recipe value, e.g. distill.terms.0.options.temperature or train.lr",
    )
    low: FiniteFloat | None = Field(None, description="lower bound of a numeric range")
    high: FiniteFloat | None = Field(None, description="upper bound of a numeric range")
    log: bool = Field(False, description="search the range on a log scale (needs low > 0)")
    integer: bool = Field(False, description="whole numbers only")
    choices: list[Any] | None = Field(
        None, min_length=1, description="a list of values to pick from"
    )

    @model_validator(mode="after")
    def _check(self) -> TuneParam:
        head = self.path.split(".")[0]
        if head not in TUNABLE_SECTIONS:
            raise ValueError(
                f"tune path {self.path!r} starts with {head!r}; tune values in "
                f"{', '.join(TUNABLE_SECTIONS)} (e.g. train.lr)"
            )
        ranged = self.low is not None or self.high is not None
        if ranged == (self.choices is not None):
            raise ValueError(
                f"tune path {self.path!r}: give low and high (a range) or choices (a list), not "
                f"{'both' if ranged else 'neither'}"
            )
        if ranged:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(
                    f"tune path {self.path!r}: low {self.low} and high {self.high} must both be set "
                    "with low < high"
                )
            if self.log and self.low <= 0:
                raise ValueError(
                    f"tune path {self.path!r}: log: true needs low > 0, got {self.low}; raise low or "
                    "drop log"
                )
        elif self.log or self.integer:
            raise ValueError(
                f"tune path {self.path!r}: log and integer apply to ranges, not choices; drop them"
            )
        return self


class TuneSpec(Strict):
    """``distill tune`` settings (:func:`distill.tune.tune`): what is searched and how trials run."""

    params: list[TuneParam] = Field(min_length=1, description="the values searched")
    trials: int = Field(20, ge=1, description="trials in the study (--trials overrides it)")
    metric: str | None = Field(
        None, description="validation metric of the final epoch (default: the task's, e.g. top1)"
    )
    direction: Literal["maximize", "minimize"] = "maximize"
    validation: int = Field(
        10_000,
        gt=0,
        description="training samples carved out as the validation set trials are scored on "
        "(the test split is never read)",
    )
    pruner: Literal["median", "none"] = Field(
        "median", description="stop trials whose intermediate validation metric is below the median"
    )
    startup_trials: int = Field(
        4, ge=0, description="trials sampled at random (and never pruned) before TPE takes over"
    )
    jobs: int = Field(1, ge=1, description="trials run at once, in separate processes (--jobs)")
    overrides: list[str] = Field(
        default_factory=list,
        description="key=value changes for the trials only (a shorter schedule, a data subset); the "
        "best recipe is written without them",
    )
    seed: int = Field(0, ge=0, description="the sampler's seed")
    out: str | None = Field(None, description="study folder (default: runs/<name>-tune)")

    @model_validator(mode="after")
    def _check(self) -> TuneSpec:
        paths = [p.path for p in self.params]
        twice = sorted({p for p in paths if paths.count(p) > 1})
        if twice:
            raise ValueError(f"tune.params: {twice[0]!r} is searched twice; keep one entry")
        for text in self.overrides:
            if "=" not in text:
                raise ValueError(
                    f"tune.overrides: {text!r} is not key=value; write e.g. train.epochs=2"
                )
        return self


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
    tune: TuneSpec | None = Field(
        None, description="distill tune: the values searched and the study"
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
        if self.distill.topk_cache is not None:
            self._check_topk_cache()
        if self.distill.cache_teacher:
            self._check_cache_teacher()
        elif self.distill.cache_views or self.distill.cache_topk:
            raise ValueError(
                "distill.cache_views/cache_topk shape the teacher cache; set distill.cache_teacher: true"
            )
        if self.data.transfer is not None:
            self._check_transfer()
        if self.distill.cache_topk and not self.distill.cache_views:
            raise ValueError(
                f"distill.cache_topk={self.distill.cache_topk} keeps the top-k of each stored view, but "
                "distill.cache_views is 0; set cache_views (with an augmentation) or remove cache_topk"
            )
        if self.distill.data_mode is not None:
            self._check_data_mode()
        for i, term in enumerate(self.distill.terms):
            if term.chunk_size is not None:
                self._check_chunked(i)
        return self

    def _check_data_mode(self) -> None:
        """Data modes draw and score token sequences with a teacher that answers every tap read."""
        if self.task != "causal_lm":
            raise ValueError(
                f"distill.data_mode chooses the text a language model trains on; it needs task: "
                f"causal_lm, not {self.task!r}; remove data_mode"
            )
        if self.teacher is None:
            raise ValueError(
                "distill.data_mode: the teacher scores (or writes) the text; add a 'teacher:' section"
            )
        mode = self.distill.data_mode
        assert mode is not None
        if mode.mode == "teacher_forced":
            return
        if "teacher_tokenizer" in self.data.options and self.distill.terms:
            raise ValueError(
                f"distill.data_mode {mode.mode} with a teacher of another tokenizer "
                "(data.options.teacher_tokenizer): the teacher cannot score the student's tokens; "
                "remove distill.terms (seq_kd trains on the task loss) or the data mode"
            )
        for i, term in enumerate(self.distill.terms):
            if "@topk" in _tap_list(term.teacher):
                raise ValueError(
                    f"distill.terms.{i} taps @topk, which only the top-k cache answers, but "
                    f"data_mode {mode.mode} has the teacher score generated text (@logits); tap "
                    "@logits with a token loss (e.g. forward_kl), or use mode: teacher_forced"
                )

    def _check_chunked(self, i: int) -> None:
        """A term's chunk_size needs both models' hidden states and head weights, in memory."""
        where = f"distill.terms.{i}.chunk_size"
        if self.task != "causal_lm":
            raise ValueError(f"{where} is for task: causal_lm, not {self.task!r}; remove it")
        if self.distill.topk_cache is not None or self.distill.cache_teacher:
            raise ValueError(
                f"{where}: a teacher cache keeps no hidden states for the chunked path; remove "
                "chunk_size or the cache (the top-k losses never build (B, T, V) teacher logits)"
            )
        if self.train.distributed == "fsdp":
            raise ValueError(
                f"{where}: the chunked path reads whole head weights, which train.distributed: fsdp "
                "shards; remove chunk_size or use distributed: ddp"
            )
        if "teacher_tokenizer" in self.data.options:
            raise ValueError(
                f"{where}: a teacher of another tokenizer has other token ids; remove chunk_size "
                "(use uld)"
            )

    def _check_transfer(self) -> None:
        """Transfer rows have no labels: the task must be a class-logit one and no term may read them."""
        if self.teacher is None or not self.distill.terms:
            raise ValueError(
                "data.transfer feeds distillation terms, but the recipe has none; add a teacher and "
                "terms, or drop data.transfer (and use data.train_subset for a labelled subset)"
            )
        if self.task != "classification":
            raise ValueError(
                f"data.transfer works with task: classification (image batches), not {self.task!r}; "
                "drop data.transfer"
            )
        if self.data.augment.mixes:
            raise ValueError(
                "data.transfer has unlabelled rows, which mixup/cutmix would blend into labelled "
                "targets; set data.augment.mixup and cutmix to 0, or drop data.transfer"
            )
        for i, term in enumerate(self.distill.terms):
            if "labels" in _lookup("loss", term.loss).extra_inputs:
                raise ValueError(
                    f"distill.terms.{i}: loss {term.loss!r} reads the ground-truth labels, which "
                    "transfer rows do not have; use a loss without labels (kd, logit_mse) or drop "
                    "data.transfer"
                )

    def _check_topk_cache(self) -> None:
        """The top-k cache keeps one output per token of fixed training text."""
        if self.distill.cache_teacher:
            raise ValueError(
                "distill.cache_teacher and distill.topk_cache are two caches of the teacher; keep one"
            )
        if not self.distill.terms:
            raise ValueError("distill.topk_cache: there are no terms to feed; remove it")
        augment = self.data.augment.model_dump(exclude_defaults=True)
        if augment:
            name, value = next(iter(augment.items()))
            raise ValueError(
                f"distill.topk_cache needs the same tokens every epoch, but data.augment.{name} "
                f"({value}) changes them; turn one of the two off"
            )
        spec = self.distill.topk_cache
        assert spec is not None
        for i, term in enumerate(self.distill.terms):
            other = [t for t in _tap_list(term.teacher) if t not in ("@logits", "@topk")]
            if other:
                raise ValueError(
                    f"distill.topk_cache answers @logits (rebuilt from the top-k) and @topk (the "
                    f"sparse top-k), but distill.terms.{i}.teacher taps {other}; tap one of those"
                )
            stored = term.options.get("capture_temperature", 1.0)
            if term.teacher == "@topk" and stored != spec.capture_temperature:
                raise ValueError(
                    f"distill.terms.{i}.options.capture_temperature is {stored}, but the cache "
                    f"stores its top-k at {spec.capture_temperature}; set the option to "
                    f"{spec.capture_temperature}"
                )

    def _check_cache_teacher(self) -> None:
        """The cache holds one teacher output per training sample: it needs the same input every epoch
        and terms that read the task's outputs."""
        if not self.distill.terms:
            raise ValueError("distill.cache_teacher: there are no terms to feed; remove it")
        augment = self.data.augment.model_dump(exclude_defaults=True)
        views = self.distill.cache_views
        if self.data.augment.mixes:
            raise ValueError(
                "distill.cache_teacher cannot keep mixed batches: mixup/cutmix blend two samples and the "
                "teacher's output on a blend is not the blend of its outputs, so no stored output is exact; "
                "set data.augment.mixup and cutmix to 0, or turn cache_teacher off (online teaching)"
            )
        if augment and (views == 0 or self.data.augment.token_mask):
            name, value = next(iter(augment.items()))
            fix = "turn one of the two off" + (
                ""
                if self.data.augment.token_mask
                else ", or store augmented views: distill.cache_views: 8"
            )
            raise ValueError(
                f"distill.cache_teacher needs the same inputs every epoch, but data.augment.{name} "
                f"({value}) changes them; {fix}"
            )
        if views and not augment:
            raise ValueError(
                f"distill.cache_views={views} stores augmented views, but data.augment is off; "
                "remove cache_views (the plain cache is exact) or switch on an augmentation"
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
