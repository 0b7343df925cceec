"""``distill eval``'s per-class results: per-class accuracy, ``confusion.png`` and ``eval.json``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from distill.io import atomic_write, write_json


def per_class_accuracy(confusion: list[list[int]]) -> list[float]:
    """Accuracy (%) of each true class: the diagonal over the row sums (rows are true labels, columns
    predictions); NaN for a class with no test sample."""
    return [100.0 * row[i] / sum(row) if sum(row) else math.nan for i, row in enumerate(confusion)]


def plot_confusion(confusion: list[list[int]], classes: list[str], path: str | Path) -> Path:
    """Draw the confusion matrix (counts; rows true, columns predicted) with per-class accuracy on the
    row labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(confusion)
    side = min(4 + 0.5 * n, 16)
    fig, ax = plt.subplots(figsize=(side + 1, side), dpi=100)
    image = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    accuracy = per_class_accuracy(confusion)
    ticks = range(n)
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, [f"{c} ({a:.0f}%)" for c, a in zip(classes, accuracy, strict=True)])
    if n <= 30:  # counts stay legible
        top = max((v for row in confusion for v in row), default=0) or 1
        for i, row in enumerate(confusion):
            for j, value in enumerate(row):
                colour = "white" if value > top / 2 else "black"
                ax.text(j, i, str(value), ha="center", va="center", fontsize=8, color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (class accuracy)")
    ax.set_title("confusion matrix (test split)")
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))  # whole or not at all
    plt.close(fig)
    return Path(path)


def write_eval(
    run_dir: str | Path,
    checkpoint: str,
    metrics: dict[str, float],
    notes: list[str],
    confusion: list[list[int]] | None = None,
    classes: list[str] | None = None,
) -> dict[str, Path]:
    """Write ``eval.json`` (``checkpoint``, ``metrics``, ``notes`` and, with a ``confusion`` matrix,
    ``classes``, ``per_class_accuracy`` (NaN as null) and ``confusion``) and ``confusion.png`` into
    ``run_dir``."""
    run_dir = Path(run_dir)
    payload: dict[str, Any] = {"checkpoint": checkpoint, "metrics": dict(metrics), "notes": notes}
    paths = {"json": run_dir / "eval.json"}
    if confusion is not None:
        classes = classes or [str(i) for i in range(len(confusion))]
        accuracy = per_class_accuracy(confusion)
        payload["classes"] = classes
        payload["per_class_accuracy"] = [None if math.isnan(a) else a for a in accuracy]
        payload["confusion"] = confusion
        paths["confusion"] = plot_confusion(confusion, classes, run_dir / "confusion.png")
    write_json(paths["json"], payload)
    return paths
