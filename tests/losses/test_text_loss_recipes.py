"""The text losses in recipes: a tiny local BERT teacher (3 layers, hidden 16, 2 heads), students cut
from it (``from_teacher``), terms written as users would (``"@hidden_states.*"`` with ``layer_map``,
module taps for MiniLM), built and trained for a few steps through ``distill.api.train``. A narrower
student (hidden 8, one head) trains with TinyBERT's W_h, ``linear`` projectors and MiniLMv2 relation
heads, and a head-by-head term between unequal head counts fails at build time with one line naming
both counts."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "text"))
from text_helpers import save_tiny_bert, write_reviews  # noqa: E402

from distill import api  # noqa: E402
from distill.config.build import build  # noqa: E402
from distill.config.checks import example_batch  # noqa: E402
from distill.config.schema import Recipe  # noqa: E402
from distill.errors import DistillError  # noqa: E402

TRAIN = {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "optimizer": "adamw", "lr": 1e-3,
         "progress": False, "device": "cpu", "log_every": 1}  # fmt: skip
QKV = ("query", "key", "value")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("models") / "teacher", layers=3)


def _recipe(tmp_path: Path, teacher_dir: Path, student: dict, terms: list[dict]) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "text-losses",
            "task": "text_classification",
            "data": {
                "name": "text_file",
                "root": str(write_reviews(tmp_path / "reviews")),
                "options": {"max_length": 16},
            },
            "teacher": {"name": f"hf:{teacher_dir}"},
            "student": {"name": "from_teacher", "options": student},
            "distill": {"task_weight": 1.0, "terms": terms},
            "train": TRAIN,
            "output": str(tmp_path / "run"),
        }
    )


def _layer(i: int, part: str) -> str:
    return f"bert.encoder.layer.{i}.attention.self.{part}"


def _check_trained(summary: dict) -> None:
    assert summary["steps"] == 3
    assert all(math.isfinite(v) for v in summary["last"].values() if isinstance(v, float))


def test_hidden_state_losses_train_a_student_cut_from_the_teacher(tmp_path, teacher_dir):
    every = {"student": "@hidden_states.*", "teacher": "@hidden_states.*", "layer_map": "uniform"}
    terms = [
        {"loss": "kd", "options": {"temperature": 2.0}},
        {"loss": "hidden_mse", **every},
        {"loss": "hidden_mse", "student": "@hidden_states.0", "teacher": "@hidden_states.0"},
        {"loss": "hidden_cosine", **every},
        {"loss": "pkd", **every, "weight": 100},
    ]
    recipe = _recipe(tmp_path, teacher_dir, {"layers": [0, 2]}, terms)
    _check_trained(api.train(recipe))


def test_attention_losses_train_a_student_with_the_teachers_heads(tmp_path, teacher_dir):
    """A fresh 2-layer student of the teacher's width (2 heads): TinyBERT attention, MiniLM.

    (A student cut from the teacher with ``layers`` would be the natural choice, but its copied layers
    keep the teacher's config object, so when the teacher was loaded with sdpa attention the student
    returns no attentions; reported to the text task's owner.)"""
    terms = [
        {"loss": "kd", "options": {"temperature": 2.0}},
        {"loss": "attention_mse", "student": "@attentions.*", "teacher": "@attentions.*"},
        {
            "loss": "minilm",
            "student": ["@attentions.1", _layer(1, "value")],
            "teacher": ["@attentions.2", _layer(2, "value")],
        },
    ]
    recipe = _recipe(tmp_path, teacher_dir, {"layers": [0, 2], "hidden_size": 16}, terms)
    _check_trained(api.train(recipe))


def test_a_narrow_student_trains_through_maps_projectors_and_relation_heads(tmp_path, teacher_dir):
    terms = [
        {"loss": "hidden_mse", "student": "@hidden_states.*", "teacher": "@hidden_states.*"},
        {
            "loss": "hidden_cosine",
            "student": "@hidden_states.2",
            "teacher": "@hidden_states.3",
            "projector": "linear",
        },
        {
            "loss": "pkd",
            "student": "@hidden_states.*",
            "teacher": "@hidden_states.*",
            "projector": "linear",
        },
        {
            "loss": "minilm",
            "options": {"relation_heads": 2},
            "student": [_layer(1, p) for p in QKV],
            "teacher": [_layer(2, p) for p in QKV],
        },
    ]
    recipe = _recipe(tmp_path, teacher_dir, {"layers": [0, 2], "hidden_size": 8}, terms)
    built = build(recipe)
    built.distiller.setup(example_batch(built.train_data))
    w_h = built.distiller.terms[0].loss.projector
    assert tuple(w_h.weight.shape) == (16, 8)  # one W_h shared by the student's two layers
    _check_trained(api.train(recipe))


def test_head_by_head_terms_need_equal_head_counts(tmp_path, teacher_dir):
    terms = [{"loss": "attention_mse", "student": "@attentions.1", "teacher": "@attentions.2"}]
    recipe = _recipe(tmp_path, teacher_dir, {"layers": [0, 2], "hidden_size": 8}, terms)
    with pytest.raises(DistillError, match="1 attention heads but the teacher has 2") as err:
        api.train(recipe)  # refused while preparing, before anything is written
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "recipe.yaml").exists()
