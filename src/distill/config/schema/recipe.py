"""The whole recipe: :class:`Recipe` holds the sections and checks the rules that span them (terms need
a teacher, what each teacher cache, a transfer set, a data mode or a chunked term allows)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from distill.config.plugins import register_import_paths
from distill.config.schema.after_training import CompareSpec, ExportSpec, QatSpec
from distill.config.schema.base import Strict, _lookup
from distill.config.schema.data import DataSpec
from distill.config.schema.model import FROM_TEACHER, ModelSpec
from distill.config.schema.terms import DistillSpec
from distill.config.schema.tune import TuneSpec
from distill.registry import check_kwargs
from distill.teacher_cache import uncacheable
from distill.train.config import TrainConfig


def _tap_list(side: str | list[str]) -> list[str]:
    return [side] if isinstance(side, str) else list(side)


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
