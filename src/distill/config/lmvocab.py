"""Vocabularies of causal LM pairs: padded output heads, and teachers of another tokenizer.

Models of one tokenizer often pad their output head past the tokenizer's length (Qwen: 151,936 or
152,064 rows for 151,669 tokens). When the teacher's and the student's heads differ in width and the
dataset's vocabulary (``num_classes``, the tokenizer's length) fits in both, every dense token loss on
``@logits`` that has no ``vocab_size`` of its own gets it set to the tokenizer's length, so both logits
are cut to the real entries (``losses/_lm.py: match_vocab``), with one note per term. A tokenizer longer
than either head means the models do not share it: refused, pointing to ``uld`` or ``seq_kd``.

Data that carries a teacher tokenizer's own ids (``shakespeare`` ``teacher_tokenizer``) gets the
teacher built for that tokenizer's length (:func:`pair_teacher_vocab`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.config.schema import Recipe
from distill.data.lm_marginal import MAX_TEACHER_VOCAB
from distill.errors import ConfigError, DistillError
from distill.losses import LOSSES
from distill.losses._lm import TokenLoss, padded_vocab_size


def pair_teacher_vocab(recipe: Recipe, train: Any) -> Recipe:
    """``recipe`` with the teacher built for its own tokenizer's length (``teacher.options.num_classes``)
    when the data carries the teacher's ids of another tokenizer (``teacher_num_classes``,
    :mod:`distill.data.lm_pair`) and the recipe does not say it. An ``aligned_kl`` or ``marginal_kl`` term
    on data without the character alignment (or the prefix table) is refused here, before training."""
    for i, term in enumerate(recipe.distill.terms):
        if term.loss not in ("aligned_kl", "marginal_kl"):
            continue
        if getattr(train, "alignment", None) is None:
            raise ConfigError(
                f"distill.terms.{i} ({term.loss}) needs the character alignment of a teacher of "
                "another tokenizer, which the data does not carry; set "
                "data.options.teacher_tokenizer (char or bpe)"
            )
        if term.loss == "marginal_kl" and getattr(train, "marginal", None) is None:
            raise ConfigError(
                f"distill.terms.{i} (marginal_kl) needs the teacher's prefix table, built only for "
                f"teacher vocabularies of at most {MAX_TEACHER_VOCAB} tokens; use aligned_kl"
            )
    width = getattr(train, "teacher_num_classes", None)
    if width is None or recipe.teacher is None or "num_classes" in recipe.teacher.options:
        return recipe
    teacher = recipe.teacher.model_copy(
        update={"options": {**recipe.teacher.options, "num_classes": int(width)}}
    )
    return recipe.model_copy(update={"teacher": teacher})


def head_width(model: nn.Module | None) -> int | None:
    """The number of logits per token of a causal LM (distill's ``gpt`` or a Hugging Face model), or
    None when the model does not say."""
    if model is None:
        return None
    width = getattr(model, "vocab_size", None)
    if width is None:
        width = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(width) if isinstance(width, int) else None


def slice_padded_heads(
    recipe: Recipe, student: nn.Module, teacher: nn.Module | None, tokenizer_len: int
) -> tuple[Recipe, list[str]]:
    """``recipe`` with ``vocab_size`` set on the token-loss terms that need it, and one note a term."""
    if recipe.task != "causal_lm":
        return recipe, []
    vs, vt = head_width(student), head_width(teacher)
    if vs is None or vt is None or vs == vt:
        return recipe, []
    terms, notes = [], []
    for i, term in enumerate(recipe.distill.terms):
        dense = term.student == "@logits" and term.teacher == "@logits"
        if not (dense and issubclass(LOSSES.get(term.loss), TokenLoss)):
            terms.append(term)
            continue
        if term.options.get("vocab_size") is not None:
            terms.append(term)  # the user's own value; the loss checks it
            continue
        try:
            size = padded_vocab_size(vs, vt, tokenizer_len)
        except DistillError as err:
            raise ConfigError(f"distill.terms.{i} ({term.loss}): {err}") from None
        terms.append(term.model_copy(update={"options": {**term.options, "vocab_size": size}}))
        notes.append(
            f"distill.terms.{i} ({term.loss}): student head {vs} and teacher head {vt} logits, "
            f"tokenizer {tokenizer_len} tokens: both cut to vocab_size={size} (padded head)"
        )
    if not notes:
        return recipe, []
    distill = recipe.distill.model_copy(update={"terms": terms})
    return recipe.model_copy(update={"distill": distill}), notes
