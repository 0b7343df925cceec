"""A recipe's LM teacher sources: ``distill.topk_cache`` (its fingerprints and its
:class:`~distill.topk.TopKCache`) and ``distill.data_mode`` (:class:`~distill.lm_modes.DataModes`).

The fingerprints are worked out without loading the teacher (its spec and the bytes of its weights
file), so a run that finds a complete cache never builds the teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from distill.config.load import weights_not_found
from distill.config.schema import Recipe
from distill.distiller import OnlineTeacher, TeacherSource
from distill.errors import ConfigError, DistillError, first_line
from distill.io import file_sha256
from distill.lm_modes import DataModes, ModeSettings
from distill.tasks.base import Task
from distill.topk import CacheSettings, Fingerprints, TopKCache
from distill.topk.store import CacheStore, fingerprint_json


def cache_settings(recipe: Recipe) -> CacheSettings:
    spec = recipe.distill.topk_cache
    assert spec is not None
    return CacheSettings(spec.k, spec.dtype, spec.capture_temperature, spec.shard_samples)


def _weight_files(weights: str) -> list[Path]:
    path = Path(weights)
    if path.is_file():
        return [path]
    if path.is_dir():  # a run folder: its final model and checkpoints
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix == ".safetensors")
    raise weights_not_found(weights, "teacher")


def teacher_fingerprint(recipe: Recipe) -> str:
    """sha256 of the teacher's name, options and weights files (their bytes; nothing is loaded)."""
    assert recipe.teacher is not None
    spec = recipe.teacher
    files = _weight_files(spec.weights) if spec.weights else []
    return fingerprint_json(
        {
            "name": spec.name,
            "options": spec.options,
            "weights": [[f.name, file_sha256(f)] for f in files],
        }
    )


def tokenizer_fingerprint(train: Any) -> str:
    """sha256 of the training data's tokenizer: its vocabulary (``get_vocab()``, Hugging Face), else
    the text of each id (``decode([i])`` for ``i < vocab_size``: an LM dataset's tokenizer,
    ``distill.data.lm.LMTokenizer``); ``"none"`` for data without a tokenizer."""
    tokenizer = getattr(train, "tokenizer", None)
    if tokenizer is None:
        return fingerprint_json("none")
    if callable(getattr(tokenizer, "get_vocab", None)):
        return fingerprint_json(tokenizer.get_vocab())
    try:
        pieces = [tokenizer.decode([i]) for i in range(int(tokenizer.vocab_size))]
    except (AttributeError, TypeError, ValueError) as err:
        raise DistillError(
            f"distill.topk_cache cannot fingerprint the tokenizer {type(tokenizer).__name__} "
            f"({first_line(err)}); give it get_vocab() or vocab_size and decode()"
        ) from None
    return fingerprint_json(pieces)


def dataset_fingerprint(recipe: Recipe, train: Any) -> str:
    """sha256 of the data section that picks the training text, its size and, for a subset, the seed
    that picks it (the tokens themselves are checked batch by batch against the ones the teacher
    scored)."""
    data = recipe.data
    subset = data.train_subset
    return fingerprint_json(
        {
            "name": data.name,
            "options": data.options,
            "train_subset": subset,
            "subset_seed": recipe.train.seed if subset else None,  # build_data's seeded subset
            "samples": len(train),
        }
    )


def recipe_fingerprints(recipe: Recipe, train: Any) -> Fingerprints:
    assert recipe.teacher is not None
    return Fingerprints(
        teacher_fingerprint(recipe),
        tokenizer_fingerprint(train),
        dataset_fingerprint(recipe, train),
        names={"teacher": recipe.teacher.name, "data": recipe.data.name},
    )


def cache_is_full(recipe: Recipe, train: Any) -> bool:
    """Whether the recipe's top-k cache is complete for this teacher, data and settings (then the
    teacher is not loaded); a cache made for others is refused here, before anything is built."""
    spec = recipe.distill.topk_cache
    if spec is None:
        return False
    store = CacheStore(spec.dir, cache_settings(recipe), recipe_fingerprints(recipe, train))
    store.check_size(len(train))
    return store.complete


def topk_source(
    recipe: Recipe, train: Any, task: Task, taps: Sequence[str], teacher: nn.Module | None
) -> TopKCache:
    spec = recipe.distill.topk_cache
    assert spec is not None
    fingerprints = recipe_fingerprints(recipe, train)
    return TopKCache(spec.dir, cache_settings(recipe), fingerprints, task, taps, teacher)


def data_modes(
    recipe: Recipe, task: Task, teacher: nn.Module | None, inner: TeacherSource | None
) -> DataModes:
    """``distill.data_mode`` around ``inner`` (the top-k cache, else the online teacher)."""
    spec = recipe.distill.data_mode
    assert spec is not None
    if teacher is None and spec.mode != "teacher_forced":  # build() loads it for these modes
        raise ConfigError(
            "distill.data_mode: the teacher scores the generated text, so it is loaded even with a "
            "full topk_cache; give the recipe its teacher weights"
        )
    settings = ModeSettings(
        spec.mode,
        spec.lam,
        spec.prompt_tokens,
        spec.temperature,
        spec.replay_size,
        spec.replay_ratio,
        recipe.train.seed,
    )
    if inner is None:
        assert teacher is not None  # the schema requires a teacher with data_mode
        inner = OnlineTeacher(teacher, task)
    return DataModes(inner, teacher, task, settings)
