"""What a finished run holds for people: ``curves.png``, ``MODEL_CARD.md``; ``distill eval``'s confusion
matrix, per-class accuracy, ``confusion.png`` and ``eval.json``; ``distill compare``'s curves and rows."""

from __future__ import annotations

import base64
import json
import re

import pytest
import torch

from distill import api
from distill.cli import commands, main
from distill.config.schema import Recipe
from distill.runreport import add_compare_rows, model_card, plot_curves
from distill.tasks.classification import confusion_matrix
from helpers import tiny_recipe_dict

PNG = b"\x89PNG\r\n\x1a\n"
TEACHER = {"name": "cnn", "options": {"channels": [4, 8]}}
KD = {"terms": [{"loss": "kd", "options": {"temperature": 3.0}, "weight": 2.0}], "task_weight": 0.5}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports") / "run"
    recipe = tiny_recipe_dict(out, name="tiny-kd", teacher=TEACHER, distill=KD)
    recipe["train"]["optimizer"] = "adamw"
    recipe["train"]["lr"] = 0.003
    api.train(Recipe(**recipe))
    return out


def card_field(card: str, label: str) -> str:
    match = re.search(rf"^- {re.escape(label)}: (.*)$", card, re.M)
    assert match, (label, card)
    return match.group(1)


def measured_rows(card: str) -> dict[str, dict[str, str]]:
    """The "Measured" table: checkpoint label -> column -> cell."""
    section = card.split("## Measured", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def test_a_finished_run_has_curves_and_a_card_that_states_what_it_is(run):
    assert (run / "curves.png").read_bytes().startswith(PNG)
    card = (run / "MODEL_CARD.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert card_field(card, "Teacher") == '`cnn` with options `{"channels": [4, 8]}`'
    assert card_field(card, "Student").startswith("`cnn`")
    assert card_field(card, "Dataset") == "`fashion_mnist`"
    subsets = card_field(card, "Subsets")
    assert subsets == "train_subset 256, test_subset 128: 256 training and 128 test samples"
    assert "T-shirt/top" in card_field(card, "Labels (10)")
    counts = card_field(card, "Training samples per label").split(", ")
    assert sum(int(c) for c in counts) == 256
    assert card_field(card, "Task loss weight (task_weight)") == "0.5"
    assert '| kd | `kd` | `{"temperature": 3.0}` | 2.0 |' in card
    assert card_field(card, "Optimizer").startswith("`adamw`, lr 0.003")
    assert card_field(card, "Training").startswith("1 epochs (4 optimizer steps done)")
    rows = measured_rows(card)
    for label in ("best", "last"):
        assert float(rows[label]["top1"]) == round(summary[label]["top1"], 4)
        assert int(rows[label]["samples"]) == 128


def test_the_card_names_the_teacher_weights_and_a_run_without_teacher(tmp_path):
    weights = str(tmp_path / "teacher" / "model.safetensors")
    recipe = Recipe(**tiny_recipe_dict(tmp_path, teacher={**TEACHER, "weights": weights}))
    summary = {"best": {"top1": 12.3456789, "epoch": 1, "step": 4}, "steps": 4}
    card = model_card(recipe, summary)
    assert card_field(card, "Teacher weights") == f"`{weights}`"
    assert measured_rows(card)["best"]["top1"] == "12.3457"
    alone = model_card(Recipe(**tiny_recipe_dict(tmp_path)), {})
    assert card_field(alone, "Teacher") == "none (trained from the labels alone)"
    assert "No evaluation ran." in alone


def test_curves_are_drawn_from_the_metrics_and_nothing_without_them(tmp_path):
    assert plot_curves(tmp_path) is None and not (tmp_path / "curves.png").exists()
    lines = [
        {"event": "train", "step": 1, "lr": 0.1, "loss": 2.0, "task": 1.5, "kd": 0.5, "acc": 0.2},
        {"event": "eval", "step": 1, "top1": 20.0},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + '\n{"event": "tra'  # a torn last line
    (tmp_path / "metrics.jsonl").write_text(text)
    assert plot_curves(tmp_path) == tmp_path / "curves.png"
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG)


def test_confusion_matrix_counts_true_rows_against_predicted_columns():
    p = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    y = torch.tensor([0, 1, 1, 3])  # label 3 lies beyond the model's 3 classes: the matrix grows
    expected = [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]
    assert confusion_matrix(p, y).tolist() == expected


def test_eval_gives_a_confusion_matrix_that_adds_up_to_its_metrics(run, capsys, monkeypatch):
    metrics = api.evaluate(run)
    confusion = metrics.confusion
    assert list(metrics)[:2] == ["top1", "top5"]  # the metric keys are unchanged
    assert sum(map(sum, confusion)) == metrics["samples"] == 128
    diagonal = [confusion[i][i] for i in range(len(confusion))]
    for i, row in enumerate(confusion):
        assert metrics.per_class[i] == pytest.approx(100 * diagonal[i] / sum(row))
    assert 100 * sum(diagonal) / 128 == pytest.approx(metrics["top1"])
    weighted = sum(a * sum(row) for a, row in zip(metrics.per_class, confusion, strict=True)) / 128
    assert weighted == pytest.approx(metrics["top1"])
    assert metrics.classes[0] == "T-shirt/top" and len(metrics.classes) == 10
    saved = json.loads((run / "eval.json").read_text())
    assert saved["confusion"] == confusion and saved["metrics"] == dict(metrics)
    assert saved["per_class_accuracy"] == pytest.approx(metrics.per_class)
    assert (run / "confusion.png").read_bytes().startswith(PNG)
    monkeypatch.setattr(commands.console, "_width", 200)
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "per class" in out
    shirts = next(line for line in out.splitlines() if "T-shirt/top" in line)
    assert f"{metrics.per_class[0]:.2f}" in shirts and str(sum(confusion[0])) in shirts


def test_compare_rows_replace_an_earlier_comparison_in_the_card(tmp_path):
    (tmp_path / "MODEL_CARD.md").write_text("# Model card: x\n")
    add_compare_rows(tmp_path, "first", "| a |\n|---|\n| 1 |")
    add_compare_rows(tmp_path, "second", "| a |\n|---|\n| 2 |")
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert card.startswith("# Model card: x\n") and card.count("## In `distill compare`") == 1
    assert "second" in card and "| 2 |" in card and "first" not in card
    assert add_compare_rows(tmp_path / "none", "t", "|") is None


def test_compare_embeds_the_curves_and_puts_its_rows_in_the_card(tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    teacher = tmp_path / "t.yaml"
    teacher.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path / "x", name="t", student=TEACHER)))
    kd = tiny_recipe_dict(tmp_path / "x", name="kd", teacher={**TEACHER, "weights": "missing"})
    kd["distill"] = {"terms": [{"loss": "kd"}]}
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(kd))
    argv = ["compare", "kd.yaml", "--teacher-recipe", str(teacher), "--pipelines", "student-kd"]
    assert main([*argv, "--out", "cmp", "--latency-repeats", "2"]) == 0, capsys.readouterr().err
    run = tmp_path / "cmp" / "student-kd"
    curves = base64.b64encode((run / "curves.png").read_bytes()).decode("ascii")
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "student-kd: training curves" in html and curves in html
    assert "student-kd/curves.png" in (tmp_path / "cmp" / "report.md").read_text()
    row = json.loads((tmp_path / "cmp" / "report.json").read_text())["rows"][0]
    compared = (run / "MODEL_CARD.md").read_text().split("## In `distill compare`", 1)[1]
    assert "this model is the `student-kd` row" in compared
    # the row as the comparison table has it: model, pipeline, runtime, precision, top-1, ...
    lines = [x for x in compared.splitlines() if "student-kd" in x and x.startswith("|")]
    assert lines, compared
    assert f"| torch | float32 | {row['accuracy']:.2f} |" in lines[0], lines


def test_a_folder_that_refuses_the_reports_keeps_the_run_and_says_so(tmp_path, monkeypatch, run):
    from rich.console import Console

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(api, "plot_curves", full)
    console = Console(record=True, width=200)
    summary = api.train(Recipe(**tiny_recipe_dict(tmp_path / "r")), console=console)
    assert summary["best"]["top1"] >= 0 and (tmp_path / "r" / "model.safetensors").exists()
    assert "could not write curves.png / MODEL_CARD.md" in console.export_text()
    monkeypatch.setattr(api, "write_eval", full)
    metrics = api.evaluate(run)
    assert metrics["samples"] == 128
    assert any("eval.json/confusion.png not written" in note for note in metrics.notes)
