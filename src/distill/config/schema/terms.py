"""``distill:``: the terms (loss, taps on each side, weight or schedule, projector, layer map, chunked
path), the task weight and the teacher caches and data mode they run with."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distill.config.schema.base import Strict, Weight, _lookup, _weight
from distill.config.schema.lm import DataModeSpec, TopKCacheSpec
from distill.losses import LOSSES
from distill.registry import check_kwargs

# a feature term's taps picked from the models' stages (distill.config.autopair)
AUTO = "auto"
AUTO_INPUTS = ("maps", "maps_list")
LAYER_TAP = re.compile(r"^@(hidden_states|attentions)\.\*$")


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
