"""``curves.png``: a run's loss terms, evaluation metric and learning rate by step, from ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.io import atomic_write

# numbers in a ``train`` record that are not loss terms
NOT_LOSSES = frozenset(
    {"step", "epoch", "lr", "samples_per_s", "grad_norm", "skipped_steps", "scaler_skipped_steps"}
)


def read_metrics(run_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``train`` and ``eval`` records of ``run_dir/metrics.jsonl`` (empty without the file); a line that
    is not a JSON object (a torn last line) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return train, evals
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            {"train": train, "eval": evals}.get(record.get("event"), []).append(record)
    return train, evals


def _numbers(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [
        (r["step"], r[key])
        for r in records
        if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_curves(
    run_dir: str | Path,
    loss_keys: list[str] | None = None,
    primary: str = "top1",
    path: str | Path | None = None,
) -> Path | None:
    """Draw ``run_dir``'s training curves into ``path`` (default ``run_dir/curves.png``): the loss terms
    (``loss_keys``, default every number of the ``train`` records but progress, rate and the
    task's batch metrics named in none of them), the ``primary`` evaluation metric (with the train batch
    accuracy ``acc`` as a percentage when logged) and the learning rate, all by optimizer step.

    Returns the path, or None when ``metrics.jsonl`` has no records (nothing is written)."""
    train, evals = read_metrics(run_dir)
    if not train and not evals:
        return None
    if loss_keys is None:
        keys = dict.fromkeys(k for r in train for k in r if k not in NOT_LOSSES)
        loss_keys = [k for k in keys if k not in ("event", "time", "acc")]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (losses, metric, lr) = plt.subplots(1, 3, figsize=(14, 4), dpi=100)
    for key in loss_keys:
        steps, values = _numbers(train, key)
        if steps:
            losses.plot(steps, values, label=key, lw=2 if key == "loss" else 1)
    losses.set_title("training loss terms")
    if losses.lines:
        losses.legend(fontsize="small")
    steps, values = _numbers(evals, primary)
    if steps:
        metric.plot(steps, values, "o-", label=f"eval {primary}")
    steps, values = _numbers(train, "acc")
    if steps and primary in ("top1", "accuracy"):
        metric.plot(steps, [100 * v for v in values], alpha=0.6, label="train batch accuracy (%)")
    metric.set_title(f"{primary} (evaluation)")
    if metric.lines:
        metric.legend(fontsize="small")
    steps, values = _numbers(train, "lr")
    lr.plot(steps, values)
    lr.set_title("learning rate")
    for ax in (losses, metric, lr):
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path) if path is not None else Path(run_dir) / "curves.png"
    atomic_write(Path(out), lambda tmp: fig.savefig(tmp, format="png"))  # whole or not at all
    plt.close(fig)
    return out
