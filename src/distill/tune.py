"""``distill tune``: search a recipe's declared ranges (its ``tune:`` section) with Optuna.

Each trial is the recipe with the trial's values set at their paths, the section's ``overrides`` (a
shorter schedule, a subset) and ``data.validation``: it trains through :func:`distill.api.train` and is
scored on samples carved from the training set, so the test split is never read. TPE (Bergstra et al.
2011) proposes values; the first trial is the recipe's own values (where they lie in the ranges), then
``startup_trials`` random ones; after them, a median pruner stops a trial whose
validation metric after an epoch is below the median of earlier trials at that step.

The study lives in a folder (``tune.out``, default ``runs/<name>-tune``): ``study.journal`` (Optuna's
journal file storage, shared by the worker processes), ``trials/<number>/`` (each trial's run),
and, when the study ends, ``best.yaml`` (the recipe with the best values, loadable by ``distill train``),
``trials.csv``, ``trials.md``, ``study.png`` and ``study.json``. Running the same command again resumes
the study: finished and pruned trials are kept, a trial that was running when the study stopped is
marked failed and its values are tried again. One ``distill tune`` at a time holds a study folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from distill import api
from distill.config.load import load_recipe, recipe_to_yaml
from distill.config.resume import _flat, _shown
from distill.config.schema import Recipe, TuneParam, TuneSpec
from distill.errors import ConfigError, DistillError
from distill.io import atomic_write, write_json, write_text
from distill.tasks import TASKS
from distill.train.callbacks import Callback
from distill.train.rundir import RunLock

STUDY_FILE = "study.journal"
# what a resumed study may change: the trial count, the processes, the folder, and how values are proposed
# (ranges, sampler, pruner); everything else reaches the trials' scores, which must stay comparable
RESUMABLE = ("output", "description", "tune.trials", "tune.jobs", "tune.out", "tune.params",
             "tune.startup_trials", "tune.pruner", "tune.seed")  # fmt: skip


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise DistillError(
            "distill tune needs Optuna; install it with pip install 'distill[tune]'"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def tune_spec(recipe: Recipe, where: str) -> TuneSpec:
    if recipe.tune is None:
        raise ConfigError(
            f"{where} has no 'tune:' section; add one with params (path and low/high or choices), "
            "e.g. tune: {params: [{path: train.lr, low: 0.01, high: 0.5, log: true}]}"
        )
    return recipe.tune


def yaml_value(value: Any) -> str:
    """``value`` as the right-hand side of a ``key=value`` override."""
    return json.dumps(value) if not isinstance(value, str) else value


def trial_overrides(spec: TuneSpec, values: Mapping[str, Any]) -> list[str]:
    """What turns the recipe into one trial's: the trial overrides, the values, the validation split."""
    return [
        *spec.overrides,
        *(f"{path}={yaml_value(v)}" for path, v in values.items()),
        f"data.validation={spec.validation}",
    ]


def check_paths(recipe: str | Path, overrides: Sequence[str], spec: TuneSpec) -> None:
    """Every bound and choice of every parameter makes a valid trial recipe: a wrong path or a value
    the recipe refuses is a one-line error before any trial runs."""
    for i, param in enumerate(spec.params):
        for value in _probe_values(param):
            try:
                load_recipe(recipe, [*overrides, *trial_overrides(spec, {param.path: value})])
            except ConfigError as err:
                raise ConfigError(
                    f"tune.params.{i} (path {param.path}, value {value!r}) makes a bad recipe: {err}"
                ) from None
            if not _path_exists(recipe, overrides, param.path):
                raise ConfigError(
                    f"tune.params.{i}: path {param.path!r} is not a value of the recipe (it would add a "
                    "new key); name an existing one, e.g. distill.terms.0.options.temperature"
                )


def _path_exists(recipe: str | Path, overrides: Sequence[str], path: str) -> bool:
    """``path`` names a value the resolved recipe has (a default counts), so a typo is not a new key."""
    node: Any = load_recipe(recipe, overrides).model_dump(mode="json")
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def _probe_values(param: TuneParam) -> list[Any]:
    if param.choices is not None:
        return list(param.choices)
    assert param.low is not None and param.high is not None
    if param.integer:
        return [math.ceil(param.low), math.floor(param.high)]
    return [param.low, param.high]


def suggest(trial: Any, param: TuneParam) -> Any:
    """The trial's value of ``param`` (Optuna's suggest calls; the path is the parameter's name)."""
    if param.choices is not None:
        return trial.suggest_categorical(param.path, param.choices)
    assert param.low is not None and param.high is not None
    if param.integer:
        return trial.suggest_int(
            param.path, math.ceil(param.low), math.floor(param.high), log=param.log
        )
    return trial.suggest_float(param.path, param.low, param.high, log=param.log)


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


def _storage(folder: Path) -> Any:
    optuna = _optuna()
    from optuna.storages.journal import JournalFileBackend

    journal = folder / STUDY_FILE
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    except Exception as err:  # noqa: BLE001 - optuna replays the log with JSON and asserts
        raise DistillError(
            f"study journal {journal} is damaged ({type(err).__name__}: {str(err)[:120]}); move it "
            "away to start the study again, or give --out (tune.out) a new folder"
        ) from None


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


def _repair_journal(journal: Path) -> bool:
    """Check the study journal line by line before Optuna appends to it: a last line cut short (a
    process killed while writing it; Optuna ignores it when reading) is removed, so the next write does
    not run into it; any other line that is not JSON is refused. Returns whether a cut was removed."""
    if not journal.is_file():
        return False
    data = journal.read_bytes()
    lines = data.split(b"\n")
    for number, line in enumerate(lines[:-1], 1):
        try:
            json.loads(line)
        except ValueError:
            raise DistillError(
                f"study journal {journal} is damaged (line {number} is not JSON); move it away to "
                "start the study again, or give --out (tune.out) a new folder"
            ) from None
    if not lines[-1]:
        return False
    with open(journal, "r+b") as f:  # the torn last line: never a complete operation
        f.truncate(len(data) - len(lines[-1]))
    return True


def _finished(study: Any) -> bool:
    """Whether a trial of ``study`` ended with a value (complete or pruned)."""
    states = _optuna().trial.TrialState
    return bool(study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)))


def _check_folder(folder: Path) -> None:
    """A study folder is new, empty or a study's (it holds the journal): trials would be written over a
    training run or other files otherwise."""
    if folder.is_dir() and not (folder / STUDY_FILE).is_file():
        held = sorted(p.name for p in folder.iterdir() if p.name != ".lock")
        if held:
            what = "a training run" if "recipe.yaml" in held else "other files"
            shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            raise DistillError(
                f"study folder {folder} holds {what} ({shown}) and no study; give --out (tune.out) a "
                "new or empty folder"
            )


def _study_key(recipe: Recipe) -> dict[str, Any]:
    """What makes trials comparable: the recipe, less the settings a resumed study may change."""
    flat = _flat(recipe.model_dump(mode="json"))
    return {k: v for k, v in flat.items() if k != "name" and not k.startswith(RESUMABLE)}


def _check_same_study(storage: Any, recipe: Recipe, folder: Path) -> None:
    """Refuse a folder that holds another recipe's study, or this study started from another recipe:
    its trials would be overwritten, or mixed with trials that are not comparable."""
    optuna = _optuna()
    names = [
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    ]
    other = [n for n in names if n != recipe.name]
    if other:
        raise DistillError(
            f"study folder {folder} holds the study {other[0]!r}, not {recipe.name!r}; its trials "
            "would be overwritten: give --out (tune.out) another folder"
        )
    study = optuna.load_study(study_name=recipe.name, storage=storage) if names else None
    known = len(study.get_trials(deepcopy=False)) if study is not None else 0
    trials = folder / "trials"
    stray = sorted(
        p.name
        for p in (trials.iterdir() if trials.is_dir() else ())
        if not (p.name.isdigit() and int(p.name) < known)
    )
    if stray:
        raise DistillError(
            f"study folder {folder}: trials/{stray[0]} is the run of no trial in the journal (it lists "
            f"{known}), so a new trial would overwrite it; give --out (tune.out) a new folder"
        )
    if study is None or not _finished(study):
        return  # no trial finished (a first trial that failed): a fixed recipe starts it over
    saved = study.user_attrs.get("recipe")
    if saved is None:
        return  # a study begun before the recipe was recorded
    now = json.loads(json.dumps(_study_key(recipe)))
    changed = [k for k in dict.fromkeys([*saved, *now]) if saved.get(k) != now.get(k)]
    if changed:
        shown = ", ".join(
            f"{k} ({_shown(saved.get(k, 'absent'))} -> {_shown(now.get(k, 'absent'))})"
            for k in changed[:3]
        )
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise DistillError(
            f"the study in {folder} was started from another recipe: {shown}{more} changed, so its "
            "trials would not be comparable; undo the change, or give --out (tune.out) a new folder"
        )


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


def _write_results(
    recipe: str | Path,
    overrides: list[str],
    base: Recipe,
    spec: TuneSpec,
    study: Any,
    folder: Path,
    started: float,
    console: Console,
) -> dict[str, Any]:
    optuna = _optuna()
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise DistillError(
            f"no trial of the study in {folder} finished (all pruned or failed); widen the ranges or "
            "set tune.pruner: none"
        )
    best = study.best_trial
    tuned = load_recipe(
        recipe,
        [
            *overrides,
            *(f"{path}={yaml_value(v)}" for path, v in best.params.items()),
            f"name={base.name}-tuned",
        ],
    )
    paths = {
        "best": folder / "best.yaml",
        "csv": folder / "trials.csv",
        "md": folder / "trials.md",
        "plot": folder / "study.png",
        "json": folder / "study.json",
    }
    header = (
        f"# tuned by distill tune: trial {best.number} of {len(trials)}, validation "
        f"{spec.metric or TASKS.get(base.task).primary_metric} {best.value:.4g} on {spec.validation} "
        "training samples\n"
    )
    write_text(paths["best"], header + recipe_to_yaml(tuned))
    rows = _rows(trials, [p.path for p in spec.params])
    _write_tables(rows, paths["csv"], paths["md"], base.name)
    _plot(rows, spec.direction, paths["plot"])
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    result = {
        "study": base.name,
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "direction": spec.direction,
        "trials": counts,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "trial_seconds": round(sum(r["seconds"] or 0 for r in rows), 1),
        "paths": {k: str(v) for k, v in paths.items()},
    }
    write_json(paths["json"], result)
    console.print(
        f"best: trial {best.number}, value {best.value:.4g}, {best.params}; recipe {paths['best']}",
        soft_wrap=True,
    )
    return result


def _rows(trials: Sequence[Any], names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for t in trials:
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        last = max(t.intermediate_values) if t.intermediate_values else None
        value = t.value if t.value is not None else (t.intermediate_values[last] if last else None)
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "value": value,
                "seconds": round(seconds, 1) if seconds is not None else None,
                **{n: t.params.get(n) for n in names},
            }
        )
    return rows


def _write_tables(rows: list[dict[str, Any]], csv_path: Path, md_path: Path, name: str) -> None:
    keys = list(rows[0])
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_text(csv_path, text.getvalue())

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = [
        f"# distill tune: {name}",
        "",
        "value: the validation metric of the final epoch (pruned trials: their last report)",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    write_text(md_path, "\n".join(lines) + "\n")


def _plot(rows: list[dict[str, Any]], direction: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for state, marker in (("complete", "o"), ("pruned", "x")):
        pts = [
            (r["trial"], r["value"]) for r in rows if r["state"] == state and r["value"] is not None
        ]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, label=state)
    best, line = None, []
    for r in sorted(rows, key=lambda r: r["trial"]):
        if r["state"] == "complete" and r["value"] is not None:
            better = max if direction == "maximize" else min
            best = r["value"] if best is None else better(best, r["value"])
        line.append((r["trial"], best))
    pts = [(x, y) for x, y in line if y is not None]
    if pts:
        ax.step(*zip(*pts, strict=True), where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation metric")
    ax.legend()
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
