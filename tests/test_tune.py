"""distill tune: a tiny study end to end, resume of an interrupted study, pruning, and the test split
never read."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from helpers import tiny_recipe_dict

optuna = pytest.importorskip("optuna", reason="distill tune needs the tune extra (optuna)")

from distill.config import splits as splits_module  # noqa: E402
from distill.config.load import load_recipe  # noqa: E402
from distill.tune import STUDY_FILE, _Report, tune  # noqa: E402

QUIET = Console(file=io.StringIO())


def tiny_tune_recipe(tmp_path: Path, trials: int = 3, **tune_extra) -> Path:
    recipe = tiny_recipe_dict(tmp_path / "run")
    recipe["train"].update({"epochs": 2, "eval_batch_size": 64})
    recipe["tune"] = {
        "params": [
            {"path": "train.lr", "low": 0.01, "high": 0.5, "log": True},
            {"path": "train.momentum", "choices": [0.0, 0.9]},
        ],
        "trials": trials,
        "validation": 64,
        "startup_trials": 1,
        "out": str(tmp_path / "study"),
        **tune_extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def no_test_split(monkeypatch):
    """Any attempt to build a test split fails the test: trials score on the carved validation set."""
    real = splits_module.build_dataset
    asked: list[str] = []

    def guarded(name, split, *args, **kwargs):
        asked.append(split)
        assert split != "test", "distill tune read the test split"
        return real(name, split, *args, **kwargs)

    monkeypatch.setattr(splits_module, "build_dataset", guarded)
    return asked


def test_a_tiny_study_writes_the_best_recipe_a_table_and_a_plot(tmp_path, no_test_split) -> None:
    result = tune(tiny_tune_recipe(tmp_path, trials=2), console=QUIET)
    study = tmp_path / "study"
    assert result["trials"] == {"complete": 2}
    assert no_test_split and set(no_test_split) == {"train"}
    best = load_recipe(study / "best.yaml")  # loadable by distill train
    assert best.name == "tiny-tuned" and best.data.validation is None and best.tune is not None
    assert best.train.lr == pytest.approx(result["best_params"]["train.lr"])
    assert best.train.momentum == result["best_params"]["train.momentum"]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(study / STUDY_FILE))
    )
    first = optuna.load_study(study_name="tiny", storage=storage).trials[0]
    hand_set = load_recipe(tmp_path / "recipe.yaml").train  # the first trial: the recipe's values
    assert first.params == {"train.lr": hand_set.lr, "train.momentum": hand_set.momentum}
    table = (study / "trials.md").read_text()
    assert table.count("| complete |") == 2
    assert (study / "study.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((study / "study.json").read_text())["best_value"] == result["best_value"]
    # each trial evaluated on the 64 carved training samples, with the trial's values
    for trial in range(2):
        run = study / "trials" / f"{trial:03d}"
        saved = load_recipe(run / "recipe.yaml")
        assert saved.data.validation == 64
        assert json.loads((run / "summary.json").read_text())["last"]["samples"] == 64


def test_a_stopped_study_resumes_and_reruns_the_trial_it_was_running(tmp_path) -> None:
    # no pruner: the stale trial's values come from an unseeded ask(), so whether the median pruner
    # stops its rerun is chance; resume is under test here, pruning in test_a_pruned_trial_stops_its_run
    recipe = tiny_tune_recipe(tmp_path, trials=1, pruner="none")
    tune(recipe, console=QUIET)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study" / STUDY_FILE))
    )
    study = optuna.load_study(study_name="tiny", storage=storage)
    left_running = study.ask(
        {
            "train.lr": optuna.distributions.FloatDistribution(0.01, 0.5, log=True),
            "train.momentum": optuna.distributions.CategoricalDistribution([0.0, 0.9]),
        }
    )
    stale_params = dict(left_running.params)
    result = tune(recipe, trials=2, console=QUIET)  # the same study, one more trial wanted
    assert result["trials"] == {"complete": 2, "fail": 1}
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert trials[1].state == optuna.trial.TrialState.FAIL
    assert trials[2].params == stale_params  # the interrupted trial's values ran again
    assert sorted(p.name for p in (tmp_path / "study" / "trials").iterdir()) == ["000", "002"]


def test_a_pruned_trial_stops_its_run() -> None:
    class Trial:
        reports: list[tuple[float, int]] = []

        def report(self, value: float, step: int) -> None:
            self.reports.append((value, step))

        def should_prune(self) -> bool:
            return True

    class Trainer:
        global_step = 7
        reason = None

        def request_stop(self, reason: str) -> None:
            self.reason = reason

    trainer, report = Trainer(), _Report(Trial(), "top1")
    report.on_evaluate_end(trainer, {"top1": 55.0, "epoch": 1, "step": 7})
    assert Trial.reports == [(55.0, 7)] and report.pruned and "pruned" in trainer.reason


def test_trials_can_run_in_parallel_processes(tmp_path) -> None:
    # no pruner: which of two simultaneous trials reports first is a race, pruning is not under test
    recipe = tiny_tune_recipe(tmp_path, trials=2, pruner="none")
    result = tune(recipe, jobs=2, console=QUIET)
    # the two processes stop at two trials between them (a running trial of the other counts)
    assert result["trials"] == {"complete": 2}
    assert len(list((tmp_path / "study" / "trials").iterdir())) == 2
