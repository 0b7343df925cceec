"""Per target runtime, the fastest exported file that keeps the accuracy budget, and why.

Candidates are made from the parity-checked float32 file: ``float32`` itself, ``float16`` (weights and
activations), ``int8-static`` (QDQ, calibrated), ``int8-dynamic`` (int8 weights, activation ranges per
batch) and ``int8-mixed``: only the compute layers that are faster in int8 on this target are quantized.
Whether a layer is faster in int8 is measured, not assumed: a file with only that layer quantized is
timed against the float32 file (on CPUs without int8 dot-product instructions small int8 convolutions are
slower than float ones, so the mixed file may be the float32 one; then it is not a candidate).

Each candidate is evaluated with the run's task (its primary metric on the test split) and timed on the
target (batch and threads as asked); the chosen file is the fastest whose metric is at most ``budget``
points below the PyTorch student's. Every candidate gets a one-line reason.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.errors import DistillError, one_line
from distill.export.latency import latency_key, measure_latency
from distill.export.quantize import COMPUTE_OPS, node_names, quantize_onnx
from distill.export.runtimes import convert_float16, load

CANDIDATES = ("float32", "float16", "int8-static", "int8-dynamic", "int8-mixed")
# a layer counts as faster in int8 when its one-layer file is at least this much faster than float32
LAYER_MARGIN = 0.98

Timer = Callable[[Path, str], float]  # (file, runtime) -> latency in ms


@dataclass
class Candidate:
    """One file a target may get: ``name`` in :data:`CANDIDATES`, how it was made (``made``), and, once
    measured on a target, its metric and latency, or why it could not run (``error``)."""

    name: str
    path: Path | None
    made: str = ""
    error: str | None = None
    metric: float | None = None
    latency_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def latency_timer(batch: int = 1, threads: int | None = 1, repeats: int = 50) -> Timer:
    """A timer: the shared harness's median at ``batch`` and ``threads`` (``None``: all cores), the
    test input being zeros of the file's input shape."""

    def time_file(path: Path, runtime: str) -> float:
        module = load(runtime, path, threads)
        example = _example_of(module)
        found = measure_latency(
            module, example, (batch,), (threads,), warmup=min(10, repeats), repeats=repeats
        )
        return found[latency_key(batch, threads)]

    return time_file


def _example_of(module: Any) -> Any:
    from distill.export.bench import input_example  # one place that reads a file's input shape

    return input_example(module.path)


def choose(
    candidates: Sequence[Candidate], reference: float, budget: float
) -> tuple[Candidate | None, dict[str, str]]:
    """The fastest candidate whose metric is at least ``reference - budget``, and one reason per
    candidate (by name). ``None`` when none passes (the reasons say why)."""
    passing = [
        c
        for c in candidates
        if c.error is None
        and c.metric is not None
        and c.latency_ms is not None
        and c.metric >= reference - budget
    ]
    chosen = min(passing, key=lambda c: c.latency_ms) if passing else None
    reasons = {}
    for c in candidates:
        if c.error is not None:
            reasons[c.name] = f"not a candidate: {c.error}"
            continue
        drop = round(reference - c.metric, 2)
        gain = -drop + 0.0  # + 0.0: "+0.00", never "-0.00"
        if c not in passing:
            reasons[c.name] = (
                f"{c.metric:.2f} is {drop:.2f} points below the PyTorch student's {reference:.2f}, "
                f"over the budget of {budget:g}"
            )
        elif c is chosen:
            reasons[c.name] = (
                f"chosen: fastest within the budget ({c.latency_ms:.4f} ms, {c.metric:.2f}, "
                f"{gain:+.2f} points)"
            )
        else:
            assert chosen is not None and chosen.latency_ms
            reasons[c.name] = (
                f"within the budget ({gain:+.2f} points) but {c.latency_ms:.4f} ms, "
                f"{c.latency_ms / chosen.latency_ms:.2f}x the time of {chosen.name}"
            )
    return chosen, reasons


def compute_nodes(onnx_path: Path) -> list[str]:
    """The float file's compute nodes (Conv, Gemm, MatMul...) in graph order."""
    order = node_names(onnx_path)
    names = {n for op in COMPUTE_OPS for n in node_names(onnx_path, op)}
    return [n for n in order if n in names]


def faster_in_int8(
    fp32: Path,
    folder: Path,
    calibration: list[Any],
    runtime: str,
    timer: Timer,
    rounds: int = 3,
) -> tuple[list[str], dict[str, float]]:
    """The compute nodes whose one-layer int8 file runs faster on ``runtime`` than the float32 file
    (median of ``rounds`` interleaved timings, by :data:`LAYER_MARGIN`), and each node's time ratio
    (int8 / float32)."""
    nodes = compute_nodes(fp32)
    singles = {}
    for i, node in enumerate(nodes):
        path = folder / f"layer{i}.int8.onnx"
        if not path.exists():
            keep = [n for n in nodes if n != node]
            quantize_onnx(fp32, path, mode="static", calibration=calibration, keep_float=keep)
        singles[node] = path
    base: list[float] = []
    times: dict[str, list[float]] = {n: [] for n in nodes}
    for _ in range(rounds):
        base.append(timer(fp32, runtime))
        for node, path in singles.items():
            times[node].append(timer(path, runtime))
    reference = statistics.median(base)
    ratios = {n: round(statistics.median(t) / reference, 3) for n, t in times.items()}
    return [n for n in nodes if ratios[n] <= LAYER_MARGIN], ratios


def make_candidates(
    fp32: Path,
    folder: Path,
    calibration: list[Any] | None,
    keep_float: list[str],
) -> list[Candidate]:
    """The runtime-independent candidates (all but ``int8-mixed``), each a file in ``folder`` or the
    reason it could not be made."""
    out = [Candidate("float32", fp32, "the parity-checked export")]
    makers: dict[str, Callable[[], tuple[Path, str]]] = {
        "float16": lambda: (
            convert_float16(fp32, folder / "student.fp16.onnx"),
            "float16 weights and activations, float32 inputs and outputs",
        ),
        "int8-static": lambda: (
            quantize_onnx(
                fp32,
                folder / "student.int8-static.onnx",
                mode="static",
                calibration=_needs(calibration),
                keep_float=keep_float,
            ),
            "int8 QDQ, calibrated"
            + (f"; {', '.join(keep_float)} in float" if keep_float else "; every layer int8"),
        ),
        "int8-dynamic": lambda: (
            quantize_onnx(fp32, folder / "student.int8-dynamic.onnx", mode="dynamic"),
            "int8 weights, activation ranges per batch",
        ),
    }
    for name, make in makers.items():
        try:
            path, made = make()
            out.append(Candidate(name, path, made))
        except DistillError as err:
            out.append(
                Candidate(name, None, error=f"could not be made ({one_line(str(err), 300)})")
            )
    return out


def _needs(calibration: list[Any] | None) -> list[Any]:
    if not calibration:
        raise DistillError("static int8 needs calibration batches")
    return calibration


def mixed_candidate(
    fp32: Path,
    folder: Path,
    scratch: Path,
    calibration: list[Any] | None,
    runtime: str,
    timer: Timer,
) -> Candidate:
    """``int8-mixed`` for ``runtime`` in ``folder``: only the layers faster in int8 there (timed with
    one-layer files in ``scratch``), or why there is none."""
    try:
        nodes = compute_nodes(fp32)
        faster, ratios = faster_in_int8(fp32, scratch, _needs(calibration), runtime, timer)
    except DistillError as err:
        return Candidate("int8-mixed", None, error=f"could not be made ({one_line(str(err), 300)})")
    timings = ", ".join(f"{n} {r:.2f}x" for n, r in ratios.items())
    if not faster:
        return Candidate(
            "int8-mixed",
            None,
            error=f"no layer is faster in int8 on {runtime} here (int8/float32 time: {timings})",
            extra={"layer_ratios": ratios},
        )
    keep = [n for n in nodes if n not in faster]
    path = quantize_onnx(
        fp32,
        folder / f"student.int8-mixed.{runtime}.onnx",
        mode="static",
        calibration=calibration,
        keep_float=keep,
    )
    return Candidate(
        "int8-mixed",
        path,
        f"int8 only where faster on {runtime}: {', '.join(faster)}",
        extra={"layer_ratios": ratios, "int8_layers": faster},
    )


def select(
    candidates: list[Candidate],
    runtime: str,
    evaluate: Callable[[Any], float],
    reference: float,
    budget: float,
    timer: Timer,
) -> dict[str, Any]:
    """Measure each candidate on ``runtime`` (``evaluate(module) -> metric``, ``timer``) and choose.
    Returns what ``export.json``'s ``selection[runtime]`` holds."""
    measured = []
    for c in candidates:
        c = Candidate(c.name, c.path, c.made, c.error, extra=dict(c.extra))
        if c.error is None and c.path is not None:
            try:
                c.metric = round(float(evaluate(load(runtime, c.path))), 2)
                c.latency_ms = round(timer(c.path, runtime), 4)
            except DistillError as err:
                c.error = f"{runtime} cannot run it ({one_line(str(err), 300)})"
        measured.append(c)
    chosen, reasons = choose(measured, reference, budget)
    return {
        "chosen": chosen.name if chosen else None,
        "file": chosen.path.name if chosen and chosen.path else None,
        "reason": reasons[chosen.name] if chosen else "no candidate is within the budget",
        "candidates": [
            {
                "name": c.name,
                "file": c.path.name if c.path else None,
                "made": c.made,
                "metric": c.metric,
                "latency_ms": c.latency_ms,
                "reason": reasons[c.name],
                **c.extra,
            }
            for c in measured
        ],
    }
