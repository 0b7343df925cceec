"""Reports: ``report.json`` (``rows`` + machine info), ``report.md`` and an accuracy/latency plot."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from rich.table import Table

COLUMNS = [
    ("name", "model", "{}"),
    ("accuracy", "top-1 %", "{:.2f}"),
    ("params", "params", "{:,}"),
    ("size_bytes", "size KiB", None),
    ("latency_ms_b1", "ms @ b1", "{:.3f}"),
    ("latency_ms_b256", "ms @ b256", "{:.2f}"),
    ("agreement", "agree %", "{:.2f}"),
]


def _cell(row: dict[str, Any], key: str, fmt: str | None) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key == "size_bytes":
        return f"{value / 1024:,.1f}"
    return fmt.format(value)


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def rows_table(rows: list[dict[str, Any]], title: str = "") -> Table:
    table = Table(title=title or None)
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="left" if header == "model" else "right")
    for row in rows:
        table.add_row(*(_cell(row, key, fmt) for key, _, fmt in COLUMNS))
    return table


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r, k, f) for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against batch-1 latency; marker area grows with the parameter count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    biggest = max(r["params"] for r in rows)
    for r in rows:
        ax.scatter(r["latency_ms_b1"], r["accuracy"], s=40 + 600 * r["params"] / biggest, alpha=0.6)
        ax.annotate(
            r["name"],
            (r["latency_ms_b1"], r["accuracy"]),
            textcoords="offset points",
            xytext=(6, 4),
        )
    ax.set_xlabel("latency at batch 1 (ms, CPU, median)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("accuracy vs latency (marker size ~ parameters)")
    ax.margins(x=0.2, y=0.15)  # room for the labels
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(
    out_dir: str | Path, rows: list[dict[str, Any]], title: str, notes: str = "", **meta: Any
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``accuracy_latency.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "report.json",
        "md": out / "report.md",
        "plot": out / "accuracy_latency.png",
    }
    payload = {"title": title, "rows": rows, "machine": machine_info(), **meta}
    paths["json"].write_text(json.dumps(payload, indent=2))
    plot(rows, paths["plot"])
    md = [
        f"# {title}",
        "",
        markdown_table(rows),
        "",
        f"![accuracy vs latency]({paths['plot'].name})",
        "",
    ]
    if notes:
        md += [notes, ""]
    info = payload["machine"]
    md.append(
        f"Machine: {info['processor']}, {info['cpu_count']} cores, torch {info['torch']} "
        f"({info['torch_threads']} threads). Latency: median of repeated CPU forward passes."
    )
    paths["md"].write_text("\n".join(md) + "\n")
    return paths
