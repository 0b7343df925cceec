"""The language-model parts of ``distill:``: the on-disk top-k cache of the teacher (``topk_cache``) and
where each step's tokens come from (``data_mode``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distill.config.schema.base import Strict

# logits divided by a temperature stay finite in float32 inside this range (as losses' TEMPERATURES)
TEMPERATURES = (1e-4, 1e4)


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
        1.0,
        ge=TEMPERATURES[0],
        le=TEMPERATURES[1],
        description="temperature of the stored log-probabilities; losses re-temper them",
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
        1.0,
        ge=TEMPERATURES[0],
        le=TEMPERATURES[1],
        description="sampling temperature (a loss's temperature is its own option)",
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
