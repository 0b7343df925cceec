"""The accuracy/latency plot: one labelled point per row, marker area ~ model size, the Pareto front drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pareto_front(rows: list[dict[str, Any]], x_key: str, y_key: str = "accuracy") -> list[int]:
    """Indices of the rows no other row beats on both ``x_key`` (lower is better) and ``y_key`` (higher).

    Sorted by ``x_key``; rows missing either value are left out.
    """
    points = [
        (i, r[x_key], r[y_key])
        for i, r in enumerate(rows)
        if r.get(x_key) is not None and r.get(y_key) is not None
    ]
    front = [
        (x, i)
        for i, x, y in points
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, x2, y2 in points if j != i)
    ]
    return [i for _, i in sorted(front)]


def plot(
    rows: list[dict[str, Any]],
    path: Path,
    x_key: str = "latency_ms_b1",
    size_key: str = "params",
    x_label: str = "latency at batch 1 (ms, CPU, median)",
    size_label: str = "parameters",
    label_key: str = "name",
) -> None:
    """Accuracy against ``x_key``; marker area grows with ``size_key``; the Pareto front as a dashed line;
    points labelled by ``label_key``.

    The x axis is logarithmic when the latencies span more than 20x.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.get(x_key) is not None and r.get("accuracy") is not None]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    biggest = max((r.get(size_key) or 0 for r in shown), default=0) or 1
    for r in shown:
        ax.scatter(
            r[x_key], r["accuracy"], s=40 + 600 * (r.get(size_key) or 0) / biggest, alpha=0.6
        )
        ax.annotate(
            r[label_key], (r[x_key], r["accuracy"]), textcoords="offset points", xytext=(6, 4)
        )
    front = [shown[i] for i in pareto_front(shown, x_key)]
    if len(front) > 1:
        ax.plot(
            [r[x_key] for r in front],
            [r["accuracy"] for r in front],
            "--",
            color="grey",
            lw=1,
            label="Pareto front",
        )
        ax.legend(loc="lower right")
    xs = [r[x_key] for r in shown]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"accuracy vs latency (marker size ~ {size_label})")
    ax.margins(x=0.2, y=0.15)  # room for the labels
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
