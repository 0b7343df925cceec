"""Fair speed claims: every row is compared with the teacher made the same way, and each runtime's rows
are ranked by Pareto dominance.

* **Reference.** A row's reference is the teacher row of the same runtime and precision: ``student-kd-int8``
  against ``teacher-int8`` (both int8 ONNX on onnxruntime), ``student-kd-openvino`` against
  ``teacher-openvino``, a PyTorch row against ``teacher``. :func:`with_references` adds the missing
  reference pipelines to a comparison, so a speed-up is never the ratio of two runtimes.
* **Speed-ups.** ``speedup_b{B}_t{T}``: the reference's latency over the row's, for every latency cell both
  have (same batch ``B``, same threads ``T``); ``reference`` names the row it is against.
* **Pareto.** Within one runtime (the deployment target: precisions compete there, e.g. an int8 teacher
  against a float32 student), a row is dominated when another is at least as accurate and at least as
  fast (or small), and strictly better in one. ``pareto`` holds, per latency cell and for ``size_bytes``,
  ``None`` for a row on the front, else the dominating row with the largest accuracy margin and by how much.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from distill.io import file_sha256

TEACHER = "teacher"
# pipeline suffix -> (runtime, precision) of the file it makes
VARIANTS = {
    "onnx": ("onnxruntime", "float32"),
    "fp16": ("onnxruntime", "float16"),
    "int8": ("onnxruntime", "int8"),
    "qat": ("onnxruntime", "int8"),
    "openvino": ("openvino", "float32"),
    "openvino-int8": ("openvino", "int8"),
}
EXPORTED_SOURCES = ("teacher", "student-kd", "pruned-kd")
_CELL = re.compile(r"^latency_ms_b(\d+)_t(\w+)$")


def split_pipeline(name: str) -> tuple[str, str | None]:
    """``student-kd-openvino-int8`` -> ``("student-kd", "openvino-int8")``; a PyTorch pipeline -> ``(name,
    None)``. The longest matching suffix wins."""
    for variant in sorted(VARIANTS, key=len, reverse=True):
        for source in EXPORTED_SOURCES:
            if name == f"{source}-{variant}":
                return source, variant
    return name, None


def reference_of(name: str) -> str:
    """The teacher pipeline made the same way as ``name`` (same runtime and precision)."""
    _, variant = split_pipeline(name)
    if variant is None:
        return TEACHER
    return f"{TEACHER}-{'int8' if variant == 'qat' else variant}"


def target_of(name: str) -> tuple[str, str]:
    """``(runtime, precision)`` of pipeline ``name``'s model; PyTorch rows are ``("torch", "float32")``."""
    _, variant = split_pipeline(name)
    return VARIANTS[variant] if variant is not None else ("torch", "float32")


def with_references(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """``names`` with each one's reference added before its first user (once), and the added names."""
    out: list[str] = []
    added: list[str] = []
    for name in names:
        ref = reference_of(name)
        if ref not in out and ref != name and ref not in names:
            out.append(ref)
            added.append(ref)
        if name not in out:
            out.append(name)
    return out, added


def latency_cells(row: dict[str, Any]) -> list[str]:
    """The row's median latency keys ``latency_ms_b{B}_t{T}`` (not the p90s, not the demo's aliases)."""
    return [k for k in row if _CELL.match(k) and row[k] is not None]


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """``reference`` and ``speedup_b{B}_t{T}`` on every measured row whose reference row was measured."""
    by_pipeline = {r.get("pipeline"): r for r in rows if r.get("status", "ok") == "ok"}
    for row in rows:
        if row.get("status", "ok") != "ok":
            continue
        ref = by_pipeline.get(reference_of(str(row.get("pipeline"))))
        if ref is None:
            continue
        row["reference"] = ref["pipeline"]
        for key in latency_cells(row):
            if ref.get(key):
                cell = key.removeprefix("latency_ms_")
                row[f"speedup_{cell}"] = round(ref[key] / row[key], 2)


def _dominators(row: dict[str, Any], group: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    acc, cost = row["accuracy"], row[key]
    return [
        o
        for o in group
        if o is not row
        and o["accuracy"] >= acc
        and o[key] <= cost
        and (o["accuracy"] > acc or o[key] < cost)
    ]


def mark_pareto(rows: list[dict[str, Any]]) -> None:
    """``pareto``: per cost key (latency cells, ``size_bytes``) ``None`` (on the runtime's front) or
    ``{"by": pipeline, "accuracy_pts": gain, "ratio": cost_row / cost_by}`` for the dominating row with
    the largest accuracy gain (ties: the cheaper). Rows not measured are left alone."""
    ok = [r for r in rows if r.get("status", "ok") == "ok" and r.get("accuracy") is not None]
    for runtime in {r.get("runtime") for r in ok}:
        group = [r for r in ok if r.get("runtime") == runtime]
        keys = sorted({k for r in group for k in latency_cells(r)}) + ["size_bytes"]
        for row in group:
            marks: dict[str, Any] = {}
            for key in keys:
                if row.get(key) is None:
                    continue
                group_key = [o for o in group if o.get(key) is not None]
                beaten = _dominators(row, group_key, key)
                if not beaten:
                    marks[key] = None
                    continue
                best = max(beaten, key=lambda o: (o["accuracy"], -o[key]))
                marks[key] = {
                    "by": best["pipeline"],
                    "accuracy_pts": round(best["accuracy"] - row["accuracy"], 2),
                    "ratio": round(row[key] / best[key], 2) if best[key] else None,
                }
            row["pareto"] = marks
            head = marks.get("latency_ms_b1_t1", "absent")
            if head != "absent":
                row["pareto_b1_t1"] = "front" if head is None else describe(head, "faster")


def describe(mark: dict[str, Any], better: str = "faster") -> str:
    """``teacher-int8: +1.23 pts, 1.4x faster`` for one dominance mark."""
    ratio = f", {mark['ratio']:g}x {better}" if mark.get("ratio") and mark["ratio"] != 1 else ""
    return f"{mark['by']}: {mark['accuracy_pts']:+.2f} pts{ratio}"


def cell_label(key: str) -> str:
    """``latency_ms_b256_tall`` -> ``b256, all threads``; ``size_bytes`` -> ``size``."""
    found = _CELL.match(key)
    if not found:
        return "size"
    batch, threads = found.groups()
    return f"b{batch}, {'all threads' if threads == 'all' else threads + ' thread'}"


def pareto_note(rows: list[dict[str, Any]]) -> str:
    """Per runtime: the front at each cost (latency cells and size), and every dominated row with the row
    that dominates it and by how much."""
    lines = []
    ok = [r for r in rows if isinstance(r.get("pareto"), dict)]
    for runtime in dict.fromkeys(r.get("runtime") for r in ok):
        group = [r for r in ok if r.get("runtime") == runtime]
        keys = list(dict.fromkeys(k for r in group for k in r["pareto"]))
        parts = []
        for key in keys:
            front = [
                r["pipeline"] for r in group if key in r["pareto"] and r["pareto"][key] is None
            ]
            beaten = [
                f"{r['pipeline']} (by {describe(r['pareto'][key], 'smaller' if key == 'size_bytes' else 'faster')})"
                for r in group
                if r["pareto"].get(key)
            ]
            text = f"{cell_label(key)}: front {', '.join(front) or '-'}"
            parts.append(text + (f"; dominated {', '.join(beaten)}" if beaten else ""))
        lines.append(f"Pareto, {runtime} (accuracy vs cost): " + ". ".join(parts) + ".")
    return "\n\n".join(lines)


def merge_bench(rows: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
    """Attach each ``distill bench`` result to the row whose file has its SHA-256 (``row["bench"]``),
    with ``ratio``: the reference row's latency on the same machine, runtime, batch and threads over
    this one's, when that was timed too."""
    if not results:
        return

    hashes = {}
    for row in rows:
        artefact = row.get("artefact")
        if artefact and str(artefact).endswith(".onnx") and Path(artefact).is_file():
            hashes[file_sha256(artefact)] = row
    for result in results:
        row = hashes.get(result["sha256"])
        if row is not None:
            row.setdefault("bench", []).append(_bench_entry(result))
    for row in rows:
        ref = next(
            (r for r in rows if r.get("pipeline") == reference_of(str(row["pipeline"]))), None
        )
        for entry in row.get("bench", []):
            same = [e for e in (ref or {}).get("bench", []) if _setting(e) == _setting(entry)]
            if same:
                entry["ratio"] = round(same[0]["latency_ms"] / entry["latency_ms"], 2)


def _bench_entry(result: dict[str, Any]) -> dict[str, Any]:
    machine = result["machine"]
    return {
        "machine": machine.get("label") or machine.get("cpu", "?"),
        "cpu": machine.get("cpu"),
        "runtime": result["runtime"],
        "batch": result["batch"],
        "threads": result["threads"],
        "latency_ms": result["latency_ms"],
    }


def _setting(entry: dict[str, Any]) -> tuple[Any, ...]:
    return entry["machine"], entry["runtime"], entry["batch"], entry["threads"]


def bench_note(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the latencies timed elsewhere (``distill bench``), one line per result."""
    lines = [
        "| pipeline | machine | runtime | batch | threads | ms | x ref |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for e in row.get("bench", []):
            ratio = f"{e['ratio']:.2f}x vs {reference_of(row['pipeline'])}" if "ratio" in e else "-"
            lines.append(
                f"| {row['pipeline']} | {e['machine']} | {e['runtime']} | {e['batch']} | "
                f"{e['threads']} | {e['latency_ms']:.4f} | {ratio} |"
            )
    if len(lines) == 2:
        return ""
    return "Timed on other machines (`distill bench`):\n\n" + "\n".join(lines)
