"""``tune:``: the values ``distill tune`` searches (a dotted recipe path with a range or choices) and how
its study runs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, FiniteFloat, model_validator

from distill.config.schema.base import Strict

# the recipe sections a tune parameter may set (not the run's name, output or these after-training ones)
TUNABLE_SECTIONS = ("task_options", "data", "student", "teacher", "distill", "train")


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
