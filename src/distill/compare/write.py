"""The comparison's report: its columns (named after the task's primary metric), the notes under the
table (speed-ups, Pareto fronts, int8 rows slower than float ones, failed rows) and the files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from distill import report
from distill.compare.fair import (
    add_speedups,
    bench_note,
    mark_pareto,
    pareto_note,
)
from distill.report import (
    COMPARE_COLUMNS,
    COMPARE_CONSOLE_COLUMNS,
    rows_table,
    write_report,
)
from distill.runreport import CURVES

EXTRA_COLUMNS = {
    "macro_f1": ("macro-F1 %", "{:.2f}"),
    "map50": ("mAP50 %", "{:.2f}"),
}  # task metrics shown after the primary one when present


PRIMARY_HEADERS = {"map50_95": "mAP50-95 %"}  # the accuracy column's header when it is not top-1


def columns(rows: list[dict[str, Any]], large_batch: int = 256, primary: str = "top1") -> list[Any]:
    """The report's columns: ``COMPARE_COLUMNS`` with the large batch's latency, the accuracy column named
    after the task's ``primary`` metric and, after it, the task metrics of :data:`EXTRA_COLUMNS` the rows
    have."""
    out = []
    for key, header, fmt in COMPARE_COLUMNS:
        if "b256" in key:
            key, header = (v.replace("b256", f"b{large_batch}") for v in (key, header))
        if key == "accuracy":
            header = PRIMARY_HEADERS.get(primary, header)
        out.append((key, header, fmt))
        if key == "accuracy":
            out += [(k, h, f) for k, (h, f) in EXTRA_COLUMNS.items() if any(k in r for r in rows)]
    return out


def int8_slower_note(rows: list[dict[str, Any]], key: str = "latency_ms_b1_t1") -> str:
    """A note for each int8 row slower at batch 1 than the float32 ONNX row of the same model
    (``X-int8`` against ``X-onnx``), with the likely reason when this CPU has no int8 dot product."""
    by_pipeline = {r.get("pipeline"): r for r in rows}
    slower = []
    for name, r in by_pipeline.items():
        float_row = by_pipeline.get(str(name).removesuffix("-int8") + "-onnx")
        if str(name).endswith("-int8") and float_row and r.get(key) and float_row.get(key):
            if r[key] > float_row[key]:
                slower.append(
                    f"{name} ({r[key]:.3f} ms) is slower than {float_row['pipeline']} "
                    f"({float_row[key]:.3f} ms) at batch 1 on this machine"
                )
    if not slower:
        return ""
    why = (
        " This CPU has no int8 dot-product instructions (x86 VNNI or AMX, ARM dotprod), so int8 "
        "kernels gain little over float32 ones at small widths, and quantizing adds nodes; the int8 "
        "file is still smaller, and on CPUs with them int8 is usually the faster one."
        if report.int8_dot_product() is False
        else ""
    )
    return "; ".join(slower) + "." + why


def _write(
    out: Path,
    rows: list[dict[str, Any]],
    recipe: str | Path,
    overrides: list[str],
    tiny: bool,
    elapsed: float,
    console: Console,
    large_batch: int = 256,
    primary: str = "top1",
    settings: dict[str, Any] | None = None,
    runs: dict[str, Path] | None = None,
) -> dict[str, Any]:
    agreement = any(r.get("agreement") is not None for r in rows)
    notes = (
        "Accuracy: the last epoch's test top-1. "
        + (
            "Agreement: share of test inputs where the model's top-1 equals the teacher's. "
            if agreement
            else ""
        )
        + "Latency: median over repeated forward passes on CPU, after warm-up; "
        "'1 thread' pins one intra-op thread, the others use all. Size: safetensors bytes for PyTorch "
        "rows, the .onnx file for onnxruntime rows. Unstructured sparsity leaves the dense size and "
        f"latency unchanged ('nonzero' counts what is left). Whole comparison: {elapsed:.0f} s."
    )
    if primary != "top1":
        notes = notes.replace("test top-1", f"test {PRIMARY_HEADERS.get(primary, primary)}", 1)
    if large_batch != 256:
        notes += f" Models are timed at batch 1 and {large_batch}"
        notes += ", every sequence max_length tokens long." if large_batch == 64 else "."
    add_speedups(rows)
    mark_pareto(rows)
    notes += (
        "\n\nSpeed-ups ('x ref') divide the latency of the row named under 'ref' (the teacher in the "
        "same runtime and precision) by this row's, at the same batch and threads."
    )
    elsewhere = bench_note(rows)
    if elsewhere:
        notes += "\n\n" + elsewhere
    fronts = pareto_note(rows)
    if fronts:
        notes += "\n\n" + fronts
    slower = int8_slower_note(rows)
    if slower:
        notes += "\n\n" + slower
    failed = [r for r in rows if r.get("status", "ok") != "ok"]
    if failed:
        notes += "\n\n" + " ".join(f"{r['pipeline']}: {r['status']}." for r in failed)
    paths = write_report(
        out,
        rows,
        f"distill compare: {recipe}",
        notes,
        columns=columns(rows, large_batch, primary),
        plot_keys=("latency_ms_b1_t1", "size_bytes", "pipeline"),
        html=True,
        images=[
            (f"{name}: training curves", run_dir / CURVES) for name, run_dir in (runs or {}).items()
        ],
        recipe=str(recipe),
        overrides=list(overrides),
        elapsed_s=round(elapsed, 1),
        tiny=tiny,
        **({"settings": settings} if settings is not None else {}),
    )
    console.print(rows_table(rows, f"distill compare: {recipe}", COMPARE_CONSOLE_COLUMNS))
    console.print(
        f"report: {paths['md']}  html: {paths['html']}  ({elapsed:.0f} s)", soft_wrap=True
    )
    return {"rows": rows, "paths": {k: str(v) for k, v in paths.items()}, "elapsed_s": elapsed}
