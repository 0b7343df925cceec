"""What a finished study writes: ``best.yaml`` (the recipe with the best values), ``trials.csv``,
``trials.md``, ``study.png`` and ``study.json``."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from distill.config.load import load_recipe, recipe_to_yaml
from distill.config.schema import Recipe, TuneSpec
from distill.errors import DistillError
from distill.io import atomic_write, write_json, write_text
from distill.tasks import TASKS
from distill.tune.params import yaml_value
from distill.tune.storage import _optuna


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
