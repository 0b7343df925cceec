"""``distill bench FILE``: time an exported file on the machine this runs on (copy the file to the device
and run it there), and read such results back so ``distill compare`` can merge them into its report.

A result is one JSON object (:data:`RESULT_KEYS`): the file's name, size and SHA-256 (how ``compare``
finds its row), the runtime and its version, the precision, batch, threads, the median and p90 latency,
the repeats, the machine (CPU, cores, OS, a user ``label``) and distill's version.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from distill.errors import DistillError, first_line
from distill.export._deps import require
from distill.export.latency import percentile, time_calls
from distill.export.runtimes import RUNTIMES, file_precision, load
from distill.io import file_sha256, write_json

RESULT_KEYS = {
    "file": str,
    "sha256": str,
    "size_bytes": int,
    "runtime": str,
    "precision": str,
    "batch": int,
    "threads": (int, str),
    "latency_ms": float,
    "latency_p90_ms": float,
    "repeats": int,
    "machine": dict,
}
_ONNX_DTYPES = {1: torch.float32, 10: torch.float16, 7: torch.int64, 6: torch.int32, 9: torch.bool}


def input_example(path: str | Path, seq_len: int = 128) -> torch.Tensor | dict[str, torch.Tensor]:
    """One input of the file without the batch dimension, zeros of the declared shape and dtype; a dict
    for a file with several inputs (text). Dynamic dimensions after the batch take ``seq_len``."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"file {path} not found; give an exported .onnx file (distill export)")
    if path.suffix == ".pte":
        return _executorch_example(path)
    onnx = require("onnx")
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as err:  # noqa: BLE001 - onnx raises DecodeError and others
        raise DistillError(
            f"{path} is not an ONNX file onnx can read ({first_line(err)}); give a file "
            "written by distill export"
        ) from None
    initializers = {t.name for t in graph.initializer}
    inputs = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.dim_value > 0 else seq_len for d in tensor.shape.dim[1:]]
        inputs[value.name] = torch.zeros(
            dims, dtype=_ONNX_DTYPES.get(tensor.elem_type, torch.float32)
        )
    if not inputs:
        raise DistillError(f"{path} declares no inputs; export it again")
    return next(iter(inputs.values())) if len(inputs) == 1 else inputs


def _executorch_example(path: Path) -> torch.Tensor:
    """Zeros of a ``.pte`` program's first input shape, without the batch (``.pte`` files have a fixed
    batch: ``bench`` then needs ``--batch`` to match it)."""
    from distill.export.runtimes import ExecuTorchModule

    meta = ExecuTorchModule(path).method.metadata
    if meta.num_inputs() != 1:
        raise DistillError(
            f"{path} takes {meta.num_inputs()} inputs; bench times one-input programs"
        )
    return torch.zeros(list(meta.input_tensor_meta(0).sizes())[1:])


def _check_file(path: Path, runtime: str) -> None:
    """The file exists and is of the kind ``runtime`` runs: ``.pte`` for ExecuTorch, ONNX otherwise."""
    if path.is_dir():
        raise DistillError(
            f"{path} is a folder; give the exported file, e.g. {path / 'student.onnx'} (distill export)"
        )
    program = path.suffix == ".pte"
    if path.is_file() and program != (runtime == "executorch"):
        runs = "ExecuTorch .pte programs" if runtime == "executorch" else "ONNX files"
        use = "executorch" if program else "onnxruntime or openvino"
        raise DistillError(
            f"{path} is {'an ExecuTorch program' if program else 'not an ExecuTorch .pte program'}, "
            f"and runtime {runtime} runs {runs}; use --runtime {use}"
        )


def machine(label: str | None = None) -> dict[str, Any]:
    """What the timing ran on: CPU model, logical cores, OS, Python, and the user's ``label``."""
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in info.read_text().splitlines()
            if line.startswith(("model name", "Hardware"))
        ]
        cpu = names[0] if names else cpu
    return {
        "label": label or platform.node() or "?",
        "cpu": cpu,
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average": [round(v, 2) for v in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
    }


def _runtime_version(runtime: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    package = runtime if runtime in ("openvino", "executorch") else "onnxruntime"
    for name in (package, f"{package}-gpu"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "?"


def bench(
    path: str | Path,
    runtime: str = "onnxruntime",
    batch: int = 1,
    threads: int | None = 1,
    repeats: int = 100,
    warmup: int = 20,
    seq_len: int = 128,
    label: str | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Time ``path`` on ``runtime`` at ``batch`` with ``threads`` intra-op threads (``None``: all cores):
    ``repeats`` calls after ``warmup`` on zeros of the file's input shape (text: ``seq_len`` tokens).
    Returns the result (:data:`RESULT_KEYS`) and writes it to ``out`` as JSON when given."""
    for name, value, low in (("batch", batch, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DistillError(f"--{name} must be an int >= {low}, got {value!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise DistillError(f"--threads must be >= 1 (or 0 for all cores), got {threads!r}")
    RUNTIMES.get(runtime)  # an unknown name: one line with close matches, before the file is read
    path = Path(path)
    _check_file(path, runtime)
    if out is not None and Path(out).is_dir():
        raise DistillError(
            f"--out {out} is a folder; give a file name, e.g. {Path(out) / 'bench.json'}"
        )
    example = input_example(path, seq_len)
    module = load(runtime, path, threads)
    if isinstance(example, Mapping):
        inputs = {
            k: v.unsqueeze(0).expand(batch, *v.shape).contiguous() for k, v in example.items()
        }
        call = lambda: module(**inputs)  # noqa: E731
    else:
        x = example.unsqueeze(0).expand(batch, *example.shape).contiguous()
        call = lambda: module(x)  # noqa: E731
    with torch.inference_mode():
        times = time_calls(call, warmup, repeats)
    result = {
        "file": path.name,
        "sha256": file_sha256(path),
        "size_bytes": path.stat().st_size,
        "runtime": runtime,
        "runtime_version": _runtime_version(runtime),
        "precision": file_precision(path),
        "batch": batch,
        "threads": "all" if threads is None else threads,
        "latency_ms": round(statistics.median(times), 4),
        "latency_p90_ms": round(percentile(times, 90), 4),
        "repeats": repeats,
        "machine": machine(label),
        "distill": _distill_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if out is not None:
        write_json(Path(out), result)
    return result


def _distill_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("distill")
    except PackageNotFoundError:
        return "?"


def read_results(paths: list[str | Path]) -> list[dict[str, Any]]:
    """``distill bench`` results from JSON files (one object, or a list of them, per file), checked;
    a file that is missing or not a result is a one-line :class:`DistillError`."""
    results = []
    for path in map(Path, paths):
        if not path.is_file():
            raise DistillError(
                f"bench result {path} not found; write one with distill bench FILE --out"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DistillError(f"bench result {path} is not JSON ({first_line(err)})") from None
        for item in data if isinstance(data, list) else [data]:
            results.append(_checked(item, path))
    return results


def _checked(item: Any, path: Path) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise DistillError(f"bench result {path} holds {type(item).__name__}, not a result object")
    for key, kind in RESULT_KEYS.items():
        value = item.get(key)
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if key == "latency_ms" or key == "latency_p90_ms":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        if not ok:
            raise DistillError(
                f"bench result {path}: {key!r} is {value!r}, expected {getattr(kind, '__name__', kind)}"
                "; write results with distill bench FILE --out"
            )
    return item
