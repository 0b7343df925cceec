"""Reports: ``report.json`` (``rows`` + machine info), ``report.md``, an accuracy/latency plot and, on request,
a self-contained ``report.html``."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from rich.table import Table

from distill.io import write_json, write_text
from distill.report.html import render_html
from distill.report.plot import plot

PLOT_LABELS = {
    "latency_ms_b1": "latency at batch 1 (ms, CPU, median)",
    "latency_ms_b1_t1": "latency at batch 1, one thread (ms, CPU, median)",
    "params": "parameters",
    "size_bytes": "size on disk",
}

Column = tuple[str, str, str | None]  # (row key, header, format; None = special-cased in _cell)

COLUMNS: list[Column] = [
    ("name", "model", "{}"),
    ("accuracy", "top-1 %", "{:.2f}"),
    ("params", "params", "{:,}"),
    ("size_bytes", "size KiB", None),
    ("latency_ms_b1", "ms @ b1", "{:.3f}"),
    ("latency_ms_b256", "ms @ b256", "{:.2f}"),
    ("agreement", "agree %", "{:.2f}"),
]

# ``distill compare``: the demo's columns plus the pipeline, the runtime and single-thread latency.
COMPARE_COLUMNS: list[Column] = [
    ("name", "model", "{}"),
    ("pipeline", "pipeline", "{}"),
    ("runtime", "runtime", "{}"),
    ("precision", "precision", "{}"),
    ("accuracy", "top-1 %", "{:.2f}"),
    ("params", "params", "{:,}"),
    ("nonzero_params", "nonzero", "{:,}"),
    ("size_bytes", "size KiB", None),
    ("latency_ms_b1_t1", "ms @ b1, 1 thread", "{:.3f}"),
    ("latency_ms_b1", "ms @ b1", "{:.3f}"),
    ("latency_ms_b256_t1", "ms @ b256, 1 thread", "{:.2f}"),
    ("latency_ms_b256", "ms @ b256", "{:.2f}"),
    ("reference", "ref", "{}"),
    ("speedup_b1_t1", "x ref @ b1, 1 thread", "{:.2f}x"),
    ("speedup_b256_tall", "x ref @ b256", "{:.2f}x"),
    ("pareto_b1_t1", "Pareto @ b1, 1 thread", "{}"),
    ("agreement", "agree %", "{:.2f}"),
    ("status", "status", "{}"),
]

# What the terminal shows (fits 80 columns; the full table is in report.md / report.html).
COMPARE_CONSOLE_COLUMNS: list[Column] = [
    ("pipeline", "pipeline", "{}"),
    ("runtime", "runtime", "{}"),
    ("accuracy", "top-1 %", "{:.2f}"),
    ("size_bytes", "size KiB", None),
    ("latency_ms_b1_t1", "ms b1 1t", "{:.3f}"),
    ("status", "status", "{}"),
]


def _cell(row: dict[str, Any], key: str, fmt: str | None) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key == "size_bytes":
        return f"{value / 1024:,.1f}"
    return fmt.format(value)


INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")  # x86 VNNI / AMX, ARM dotprod


def int8_dot_product(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU has int8 dot-product instructions (x86 VNNI or AMX, ARM dotprod), which int8
    kernels need to beat float32 ones; read from ``cpuinfo``'s flags, None where there is none (not
    Linux)."""
    try:
        lines = Path(cpuinfo).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    flags = {f for line in lines if line.startswith(("flags", "Features")) for f in line.split()}
    return any(f in flags for f in INT8_DOT_FLAGS) if flags else None


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "int8_dot_product": int8_dot_product(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def rows_table(
    rows: list[dict[str, Any]], title: str = "", columns: list[Column] | None = None
) -> Table:
    columns = columns or COLUMNS
    table = Table(title=title or None)
    for key, header, _ in columns:
        if key in ("name", "pipeline"):  # names stay whole; other columns give way first
            table.add_column(header, justify="left", no_wrap=True)
        elif key == "status":  # a failure's detail is in the report's notes
            table.add_column(
                header, justify="left", no_wrap=True, overflow="ellipsis", max_width=12
            )
        else:
            table.add_column(header, justify="left" if key == "runtime" else "right")
    for row in rows:
        table.add_row(*(_cell(row, key, fmt) for key, _, fmt in columns))
    return table


def markdown_table(rows: list[dict[str, Any]], columns: list[Column] | None = None) -> str:
    columns = columns or COLUMNS
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r, k, f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    rows: list[dict[str, Any]],
    title: str,
    notes: str = "",
    columns: list[Column] | None = None,
    plot_keys: tuple[str, str, str] = ("latency_ms_b1", "params", "name"),
    html: bool = False,
    images: list[tuple[str, Path]] | None = None,
    **meta: Any,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``accuracy_latency.png`` (and ``report.html``) into ``out_dir``.

    ``plot_keys`` are the row keys of the plot's x axis (a latency in ms), its marker size and point labels.
    ``images`` are ``(caption, PNG path)`` figures (the runs' training curves): linked from ``report.md``
    and inlined in ``report.html``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "report.json",
        "md": out / "report.md",
        "plot": out / "accuracy_latency.png",
    }
    payload = {"title": title, "rows": rows, "machine": machine_info(), **meta}
    write_json(paths["json"], payload)
    x_key, size_key, label_key = plot_keys
    plot(
        rows,
        paths["plot"],
        x_key=x_key,
        size_key=size_key,
        x_label=PLOT_LABELS.get(x_key, x_key),
        size_label=PLOT_LABELS.get(size_key, size_key),
        label_key=label_key,
    )
    md = [
        f"# {title}",
        "",
        markdown_table(rows, columns),
        "",
        f"![accuracy vs latency]({paths['plot'].name})",
        "",
    ]
    if notes:
        md += [notes, ""]
    if images:
        md += ["## Training curves", ""]
        for caption, image in images:
            md += [f"![{caption}]({Path(os.path.relpath(image, out)).as_posix()})", ""]
    info = payload["machine"]
    machine = (
        f"Machine: {info['processor']}, {info['cpu_count']} cores, torch {info['torch']} "
        f"({info['torch_threads']} threads). Latency: median of repeated CPU forward passes."
    )
    md.append(machine)
    write_text(paths["md"], "\n".join(md) + "\n")
    if html:
        columns = columns or COLUMNS
        paths["html"] = out / "report.html"
        page = render_html(
            title,
            [h for _, h, _ in columns],
            [[_cell(r, k, f) for k, _, f in columns] for r in rows],
            [r.get("status", "ok") != "ok" for r in rows],
            paths["plot"].read_bytes(),
            notes,
            machine,
            [(caption, Path(image).read_bytes()) for caption, image in images or []],
        )
        write_text(paths["html"], page)
    return paths
