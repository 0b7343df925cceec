"""Running a study: :func:`tune` (the entry point), the trials of one process or of ``--jobs`` processes,
the pruning callback and the progress lines, and the recipe's own values as the first trial."""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from distill import api
from distill.config.load import load_recipe
from distill.config.schema import Recipe, TuneSpec
from distill.errors import DistillError
from distill.tasks import TASKS
from distill.train.callbacks import Callback
from distill.train.rundir import RunLock
from distill.tune.params import check_paths, suggest, trial_overrides, tune_spec
from distill.tune.results import _write_results
from distill.tune.storage import (
    STUDY_FILE,
    _check_folder,
    _check_same_study,
    _finished,
    _optuna,
    _repair_journal,
    _storage,
    _study_key,
)


class _Report(Callback):
    """Reports each evaluation's metric to the trial and stops the run when the pruner says so."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric, self.pruned = trial, metric, False

    def on_evaluate_end(self, trainer: Any, metrics: Mapping[str, float]) -> None:
        if self.metric not in metrics:
            raise DistillError(
                f"tune.metric {self.metric!r} is not a validation metric of this task; use one of "
                f"{', '.join(sorted(k for k in metrics if k not in ('epoch', 'step')))}"
            )
        self.trial.report(float(metrics[self.metric]), step=trainer.global_step)
        if self.trial.should_prune():
            self.pruned = True
            trainer.request_stop("pruned by distill tune")


def study_dir(recipe: Recipe, spec: TuneSpec) -> Path:
    return Path(spec.out or f"runs/{recipe.name}-tune")


def _study(recipe: Recipe, spec: TuneSpec, folder: Path, storage: Any) -> Any:
    optuna = _optuna()
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=0)
        if spec.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(
        storage=storage,
        study_name=recipe.name,
        direction=spec.direction,
        # each process its own seed: two workers must not propose the same values
        sampler=optuna.samplers.TPESampler(
            seed=spec.seed + os.getpid() % 10_000 * (spec.jobs > 1),
            n_startup_trials=spec.startup_trials,
        ),
        pruner=pruner,
        load_if_exists=True,
    )


def _objective(recipe_path: str, overrides: list[str], spec: TuneSpec, folder: Path, metric: str):
    optuna = _optuna()
    quiet = Console(file=io.StringIO())

    def objective(trial: Any) -> float:
        values = {p.path: suggest(trial, p) for p in spec.params}
        run_dir = folder / "trials" / f"{trial.number:03d}"
        recipe = load_recipe(
            recipe_path, [*overrides, *trial_overrides(spec, values), f"output={run_dir}"]
        )
        report = _Report(trial, metric)
        summary = api.train(recipe, overwrite=True, console=quiet, callbacks=[report])
        if report.pruned:
            raise optuna.TrialPruned()
        return float(summary["last"][metric])

    return objective


def _worker(
    recipe_path: str, overrides: list[str], folder: str, n_trials: int, threads: int
) -> None:
    """One process of a parallel study: trials until the study holds ``n_trials`` finished ones."""
    import torch

    torch.set_num_threads(threads)
    _run_trials(recipe_path, overrides, Path(folder), n_trials)


def _run_trials(
    recipe_path: str,
    overrides: list[str],
    folder: Path,
    n_trials: int,
    console: Console | None = None,
) -> None:
    optuna = _optuna()
    recipe = load_recipe(recipe_path, overrides)
    spec = tune_spec(recipe, recipe_path)
    study = _study(recipe, spec, folder, _storage(folder))
    metric = spec.metric or TASKS.get(recipe.task).primary_metric
    # a trial another process is running counts too: parallel workers stop at ``n_trials`` between them
    # (stale running trials of a killed study were failed before the workers started)
    TrialState = optuna.trial.TrialState
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    left = n_trials - len(study.get_trials(deepcopy=False, states=counted))
    if left > 0:
        study.optimize(
            _objective(recipe_path, overrides, spec, folder, metric),
            n_trials=left,
            callbacks=[
                optuna.study.MaxTrialsCallback(n_trials, states=counted),
                _Progress(console),
            ],
            catch=(),
        )


class _Progress:
    """One line per finished trial: its number, state, value and values."""

    def __init__(self, console: Console | None) -> None:
        self.console = console or Console()

    def __call__(self, study: Any, trial: Any) -> None:
        value = "" if trial.value is None else f" {trial.value:.4g}"
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
        )
        self.console.print(
            f"trial {trial.number}: {trial.state.name.lower()}{value} ({shown})", soft_wrap=True
        )


def _enqueue_recipe_values(study: Any, recipe: Recipe, spec: TuneSpec) -> None:
    """The recipe's own values (those inside their range or among the choices) as the first trial, so
    the study's best is never one the hand-set recipe beats on validation."""
    values = recipe.model_dump(mode="json")
    first: dict[str, Any] = {}
    for param in spec.params:
        node: Any = values
        for part in param.path.split("."):
            node = node[int(part)] if isinstance(node, list) else node.get(part)
        if param.choices is not None:
            if node in param.choices:
                first[param.path] = node
        elif isinstance(node, (int, float)) and param.low <= node <= param.high:  # type: ignore[operator]
            first[param.path] = node
    if first:
        study.enqueue_trial(first)


def _fail_stale_trials(study: Any, storage: Any) -> int:
    """Trials left running by a study that was stopped (the folder lock says none runs now): marked
    failed, their values queued to be tried again. Returns how many."""
    optuna = _optuna()
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
    return len(stale)


def tune(
    recipe: str | Path,
    overrides: Sequence[str] = (),
    trials: int | None = None,
    jobs: int | None = None,
    out: str | Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run (or resume) the study the recipe's ``tune:`` section declares; returns what ``study.json``
    holds (best value and values, trial counts by state, the paths written).

    ``trials``, ``jobs`` and ``out`` override ``tune.trials``, ``tune.jobs`` and ``tune.out``.
    """
    console = console or Console()
    overrides = list(overrides)
    for key, value in (("trials", trials), ("jobs", jobs), ("out", out)):
        if value is not None:
            overrides.append(f"tune.{key}={value}")
    base = load_recipe(recipe, overrides)
    spec = tune_spec(base, str(recipe))
    _optuna()  # a missing extra is said before anything runs
    check_paths(recipe, overrides, spec)
    folder = study_dir(base, spec)
    _check_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = RunLock(folder)
    lock.acquire()
    started = time.perf_counter()
    try:
        if _repair_journal(folder / STUDY_FILE):
            console.print("the study journal ended in a write cut short; that part was dropped")
        storage = _storage(folder)
        _check_same_study(storage, base, folder)
        study = _study(base, spec, folder, storage)
        if not _finished(study):  # nothing to compare with yet: the recipe may still be fixed
            study.set_user_attr("recipe", _study_key(base))
        if not study.get_trials(deepcopy=False):
            _enqueue_recipe_values(study, base, spec)
        stale = _fail_stale_trials(study, storage)
        if stale:
            console.print(f"resuming: {stale} interrupted trial(s) will run again", soft_wrap=True)
        console.print(
            f"tuning {base.name}: {spec.trials} trials, {spec.jobs} at a time, "
            f"{len(spec.params)} values, scored on {spec.validation} training samples; study in {folder}",
            soft_wrap=True,
        )
        if spec.jobs == 1:
            _run_trials(str(recipe), overrides, folder, spec.trials, console)
        else:
            _parallel(str(recipe), overrides, folder, spec)
        study = _study(base, spec, folder, storage)
        return _write_results(recipe, overrides, base, spec, study, folder, started, console)
    finally:
        lock.release()


def _parallel(recipe: str, overrides: list[str], folder: Path, spec: TuneSpec) -> None:
    threads = max(1, (os.cpu_count() or 1) // spec.jobs)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(recipe, overrides, str(folder), spec.trials, threads))
        for _ in range(spec.jobs)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise DistillError(
            f"{len(failed)} of {spec.jobs} tuning processes failed (exit {failed[0]}); run again with "
            "--jobs 1 to see the error (the study resumes)"
        )
