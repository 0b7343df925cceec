"""Text recipes end to end: tiny local models through `distill train`/`eval`, the bad inputs, and the real
all-MiniLM-L6-v2 on a few dozen Rotten Tomatoes rows (2 steps, then an exact resume)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from text_helpers import (
    WORDS,
    real_teacher_available,
    save_tiny_bert,
    tiny_tokenizer,
    write_reviews,
)

from distill import api
from distill.cli import main
from distill.config.build import build, expand_layer_taps, make_trainer
from distill.config.load import load_recipe
from distill.config.schema import Recipe, TermSpec
from distill.errors import DistillError

TRAIN = {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "optimizer": "adamw", "lr": 1e-3,
         "progress": False, "device": "cpu", "log_every": 1}  # fmt: skip


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("models") / "teacher", layers=3)


def _recipe(tmp_path: Path, teacher_dir: Path, **edits) -> dict:
    data = write_reviews(tmp_path / "reviews")
    recipe = {
        "name": "text-tiny",
        "task": "text_classification",
        "data": {"name": "text_file", "root": str(data), "options": {"max_length": 16}},
        "teacher": {"name": f"hf:{teacher_dir}"},
        "student": {"name": "from_teacher", "options": {"layers": [0, 2]}},
        "distill": {
            "task_weight": 0.5,
            "terms": [{"loss": "kd", "options": {"temperature": 2.0}, "weight": 0.5}],
        },
        "train": TRAIN,
        "output": str(tmp_path / "run"),
    }
    for key, value in edits.items():
        section, _, leaf = key.rpartition(".")
        target = recipe
        for part in filter(None, section.split(".")):
            target = target.setdefault(part, {})
        target[leaf] = value
    return recipe


def test_train_then_eval_a_student_cut_from_a_local_teacher(
    tmp_path: Path, teacher_dir: Path
) -> None:
    recipe = Recipe.model_validate(_recipe(tmp_path, teacher_dir))
    summary = api.train(recipe)
    assert summary["steps"] == 3 and (tmp_path / "run" / "model.safetensors").is_file()
    metrics = api.evaluate(tmp_path / "run", "last")
    assert metrics["samples"] == 12 and {"top1", "macro_f1", "agreement"} <= set(metrics)
    assert metrics["top1"] == pytest.approx(summary["last"]["top1"])


def test_layer_taps_expand_per_student_layer(tmp_path: Path, teacher_dir: Path) -> None:
    built = build(Recipe.model_validate(_recipe(tmp_path, teacher_dir)))
    for how, teacher_layers in (("uniform", [2, 3]), ("last", [2, 3]), ([1, 3], [1, 3])):
        spec = TermSpec(
            loss="kd", student="@hidden_states.*", teacher="@hidden_states.*", layer_map=how
        )
        expanded = expand_layer_taps(spec, built.student, built.teacher, 0)
        assert expanded.student == ["@hidden_states.1", "@hidden_states.2"]
        assert expanded.teacher == [f"@hidden_states.{i}" for i in teacher_layers]
    spec = TermSpec(loss="kd", student="@attentions.*", teacher="@attentions.*", layer_map="last")
    assert expand_layer_taps(spec, built.student, built.teacher, 0).teacher == [
        "@attentions.1",
        "@attentions.2",
    ]
    with pytest.raises(ValueError, match="go on both sides"):
        TermSpec(loss="kd", student="@hidden_states.*", teacher="@hidden_states.3")


def _error(tmp_path: Path, recipe: dict) -> str:
    with pytest.raises(DistillError) as err:
        build(Recipe.model_validate(recipe))
    message = str(err.value)
    assert "\n" not in message
    return message


def test_bad_inputs_say_which_and_what_to_do(tmp_path: Path, teacher_dir: Path) -> None:
    message = _error(
        tmp_path, _recipe(tmp_path, teacher_dir, **{"student.options": {"layers": [0, 3]}})
    )
    assert "student: from_teacher: layer 3 is out of range; the teacher has 3 layers" in message
    message = _error(
        tmp_path, _recipe(tmp_path, teacher_dir, **{"data.options": {"text_column": "review"}})
    )
    assert "no column 'review' (columns: 'text', 'label'); set text_column" in message
    other = save_tiny_bert(tmp_path / "other", layers=2, tokenizer=tiny_tokenizer(WORDS[::-1]))
    message = _error(tmp_path, _recipe(tmp_path, teacher_dir, student={"name": f"hf:{other}"}))
    assert (
        "use different tokenizers or vocabularies, but distillation terms need the same token ids"
        in message
    )
    three = save_tiny_bert(
        tmp_path / "three", num_labels=3
    )  # a trained head for 3 labels, data has 2
    message = _error(tmp_path, _recipe(tmp_path, teacher_dir, **{"teacher.name": f"hf:{three}"}))
    assert "head for 3 labels" in message and "the data has 2 classes" in message
    with pytest.raises(ValueError, match="from_teacher builds the student from the teacher"):
        Recipe.model_validate(_recipe(tmp_path, teacher_dir, teacher=None, distill={}))
    with pytest.raises(
        ValueError, match="from_teacher has no option .layer.. Did you mean .layers."
    ):
        Recipe.model_validate(_recipe(tmp_path, teacher_dir, **{"student.options": {"layer": [0]}}))


def test_cli_bad_layer_is_one_line_exit_2(tmp_path: Path, teacher_dir: Path, capsys) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump(_recipe(tmp_path, teacher_dir, **{"student.options": {"uniform": 9}}))
    )
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "uniform=9 is out of range; the teacher has 3 layers" in err[0]


@pytest.mark.skipif(
    not real_teacher_available(), reason="needs scripts/get_text_data.sh (MiniLM + Rotten Tomatoes)"
)
def test_real_minilm_two_steps_then_exact_resume(tmp_path: Path) -> None:
    """The shipped KD recipe on 32 Rotten Tomatoes rows with a 1-layer student from all-MiniLM-L6-v2:
    two steps straight equal one step, a stop and a resume, tensor for tensor."""
    overrides = ["teacher.weights=null", "student.options.uniform=1", "data.train_subset=32",
                 "data.test_subset=16", "data.options.max_length=32", "train.batch_size=16",
                 "train.epochs=1", "train.progress=false", "train.device=cpu"]  # fmt: skip
    states = []
    for stops in ((), (1,)):
        recipe = load_recipe(
            "rotten_tomatoes/kd", [*overrides, f"output={tmp_path / str(len(stops))}"]
        )
        built = build(recipe)
        assert (
            built.student.config.num_hidden_layers == 1 and built.teacher.config.hidden_size == 384
        )
        for stop in stops:
            make_trainer(built).fit(stop_after=stop)
            built = build(recipe)
        summary = make_trainer(built).fit(resume=bool(stops))
        assert summary["steps"] == 2 and summary["last"]["samples"] == 16
        states.append(built.student.state_dict())
    for name, tensor in states[0].items():
        torch.testing.assert_close(states[1][name], tensor, rtol=0, atol=0, msg=name)
