"""``distill --version``, shell completion, and ``--device`` on ``eval`` and ``compare`` (issue 21, item 8)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from importlib import metadata

import pytest
import torch
import yaml

from cli.test_cli import assert_one_error_line, run_cli
from distill import api
from distill.compare import _measure
from distill.compare.context import Produced
from distill.tasks.classification import ClassificationTask
from helpers import tiny_recipe_dict


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_version_names_distill_and_torch(capsys):
    code, out, err = run_cli(capsys, "--version")
    assert code == 0, err
    assert out.strip() == f"distill {metadata.version('distill')}, torch {torch.__version__}"


def test_show_completion_prints_a_script(capsys):
    code, out, err = run_cli(capsys, "--show-completion", "bash")
    assert code == 0, err
    assert "_DISTILL_COMPLETE" in out and "complete" in out


@pytest.mark.parametrize(
    "words, expected", [("distill li", ["list"]), ("distill list ta", ["tasks", "taps"])]
)
def test_completion_completes_commands(words, expected):
    """What the installed shell script asks for: the commands (and what ``list`` lists) starting with
    what was typed."""
    env = {
        **os.environ,
        "_DISTILL_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - 1),
    }
    done = subprocess.run(
        [sys.executable, "-m", "distill"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == expected


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaldevice")
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(folder / "run")))
    api.train(path)
    return folder / "run"


@pytest.mark.parametrize("device", ["cuda:99", "gpu", "cuda"])
def test_eval_refuses_a_device_that_is_not_here(capsys, trained_run, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    code, out, err = run_cli(capsys, "eval", str(trained_run), "--device", device)
    assert code == 2 and out == ""
    assert_one_error_line(err, "--device", repr(device))


def test_eval_runs_the_models_on_the_device(capsys, trained_run, monkeypatch):
    """``--device`` reaches the task's evaluation, with the student's weights there too."""
    seen = []
    original = ClassificationTask.evaluate

    def spy(self, model, loader, teacher=None, device="cpu"):
        seen.append((torch.device(device), next(model.parameters()).device))
        return original(self, model, loader, teacher, device)

    monkeypatch.setattr(ClassificationTask, "evaluate", spy)
    code, out, err = run_cli(capsys, "eval", str(trained_run), "--device", "cpu")
    assert code == 0, err
    on_cpu = out
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    code, out, err = run_cli(capsys, "eval", str(trained_run), "--device", "auto")
    assert code == 0, err
    assert seen[0] == (torch.device("cpu"),) * 2
    assert seen[1][0].type == expected.type and seen[1][1].type == expected.type
    if expected.type == "cpu":
        assert out == on_cpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_eval_on_cuda_matches_cpu(trained_run):
    cpu = api.evaluate(trained_run, device="cpu")
    gpu = api.evaluate(trained_run, device="cuda")
    assert gpu["top1"] == pytest.approx(cpu["top1"], abs=1.0)


def test_compare_refuses_a_bad_device_before_training(capsys, tmp_path):
    code, out, err = run_cli(capsys, "compare", "fashion_mnist/kd", "--device", "tpu9")
    assert code == 2
    assert_one_error_line(err, "--device", "'tpu9'")
    assert not (tmp_path / "runs").exists()


class _Ctx:
    """The parts of a comparison's context that measuring one row reads."""

    def __init__(self, task, loader):
        self.console = type("C", (), {"print": staticmethod(lambda *a, **k: None)})()
        self.task, self._loader = task, loader
        self.example = torch.zeros(1, 28, 28)
        self.teacher_predictions = None
        self.large_batch = 2

    def test_loader(self):
        return self._loader


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_compare_measures_torch_accuracy_on_the_device(monkeypatch, runtime):
    """Torch rows are evaluated on ``--device``, onnxruntime rows on the CPU; latency is timed on the
    CPU either way (the model is back there after its evaluation)."""
    measure = importlib.import_module("distill.report.measure")

    evaluated, timed = [], []

    class Task:
        primary_metric = "top1"

        def evaluate(self, model, loader, teacher=None, device="cpu"):
            evaluated.append(torch.device(device))
            return {"top1": 50.0}

    def fake_latency(model, example, large_batch, repeats):
        timed.append(next(model.parameters()).device)
        return {}

    monkeypatch.setattr(measure, "latency_row", fake_latency)
    target = "cuda" if torch.cuda.is_available() else "cpu"
    model = torch.nn.Linear(2, 2)
    _measure(_Ctx(Task(), []), "x", Produced(model, "x", runtime=runtime), 1, target)
    want = torch.device(target if runtime == "torch" else "cpu")
    assert evaluated == [want] and timed == [torch.device("cpu")]
