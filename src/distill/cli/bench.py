"""``distill bench FILE``: a thin shell over :func:`distill.export.bench.bench`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from distill.cli import app
from distill.export.bench import bench as bench_file

console = Console()


@app.command()
def bench(
    file: Annotated[Path, typer.Argument(help="an exported model file (.onnx)")],
    runtime: Annotated[
        str,
        typer.Option(
            help="onnxruntime, openvino, onnxruntime-cuda or onnxruntime-tensorrt",
        ),
    ] = "onnxruntime",
    batch: Annotated[int, typer.Option(help="batch size")] = 1,
    threads: Annotated[int, typer.Option(help="intra-op threads (0: all cores)")] = 1,
    repeats: Annotated[int, typer.Option(help="timed calls after the warm-up")] = 100,
    warmup: Annotated[int, typer.Option(help="untimed calls first")] = 20,
    seq_len: Annotated[
        int, typer.Option("--seq-len", help="tokens per input for files with a dynamic length")
    ] = 128,
    label: Annotated[
        str | None, typer.Option(help="a name for this machine in the results (default: hostname)")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="write the result here as JSON (distill compare --bench-results reads it)"
        ),
    ] = None,
) -> None:
    """Time an exported file on this machine (copy it to the device and run this there); prints the
    median latency and, with --out, writes a result that `distill compare` merges into its report."""
    result = bench_file(
        file,
        runtime=runtime,
        batch=batch,
        threads=threads if threads != 0 else None,
        repeats=repeats,
        warmup=warmup,
        seq_len=seq_len,
        label=label,
        out=out,
    )
    console.print(
        f"{escape(result['file'])} on {result['runtime']} {result['runtime_version']} "
        f"({result['precision']}), batch {result['batch']}, threads {result['threads']}: "
        f"{result['latency_ms']:.4f} ms median, {result['latency_p90_ms']:.4f} ms p90 "
        f"({result['repeats']} calls; {escape(result['machine']['cpu'])})",
        soft_wrap=True,
        highlight=False,
    )
    if out is not None:
        console.print(f"written to {escape(str(out))}", soft_wrap=True)
    else:
        console.print(json.dumps(result), soft_wrap=True, highlight=False, markup=False)
