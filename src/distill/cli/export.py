"""``distill export RUN_DIR``: a thin shell over :func:`distill.export.export_run`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from distill.cli import app
from distill.compress.qat import check_qat_task, qat_run
from distill.config.run import run_recipe
from distill.errors import DistillError
from distill.export import export_run

console = Console()


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a folder written by `distill train`")],
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="export format: onnx, or coreml (also student.mlpackage, run only on macOS) (recipe: export.format)",
        ),
    ] = None,
    int8: Annotated[
        bool | None,
        typer.Option(
            "--int8/--no-int8",
            help="also write an int8 model (static, calibrated on training data; text: dynamic); "
            "default: the recipe's export.int8, off",
        ),
    ] = None,
    int8_mode: Annotated[
        str | None,
        typer.Option(
            "--int8-mode",
            help="static or dynamic (default: the recipe's export.int8_mode, else dynamic for text "
            "models, static otherwise)",
        ),
    ] = None,
    opset: Annotated[
        int | None,
        typer.Option(help="ONNX opset (default: the recipe's export.opset, else the exporter's)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="output folder (default: RUN_DIR/export)")
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(help="best or last (default: the recipe's export.checkpoint, best)"),
    ] = None,
    select: Annotated[
        bool | None,
        typer.Option(
            "--select/--no-select",
            help="also make float16, int8 static/dynamic and per-layer mixed files and pick, per "
            "target, the fastest within the accuracy budget (default: export.select, off)",
        ),
    ] = None,
    targets: Annotated[
        str | None,
        typer.Option(
            help="runtimes to pick for, comma-separated: onnxruntime, openvino, onnxruntime-cuda, "
            "onnxruntime-tensorrt (default: export.targets, onnxruntime)"
        ),
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option(help="points of top-1 a picked file may lose (default: export.budget, 1.0)"),
    ] = None,
    qat_epochs: Annotated[
        int | None,
        typer.Option(
            "--qat-epochs",
            help="also write an int8 model fine-tuned this many epochs with quantization-aware "
            "training and KD from the float student (0: off; default: qat.epochs when the recipe "
            "has export.qat: true, else off)",
        ),
    ] = None,
) -> None:
    """Export a trained student to ONNX (dynamic batch; text: and sequence length), check it against
    PyTorch and evaluate it. Settings come from the run's recipe (export: and qat: sections); a flag
    given here overrides its setting."""
    if qat_epochs is not None and qat_epochs < 0:
        raise DistillError(f"--qat-epochs must be >= 0, got {qat_epochs}; 1 is usually enough")
    saved = run_recipe(run_dir)
    if saved.export.qat if qat_epochs is None else qat_epochs > 0:
        check_qat_task(saved.task)  # before export_run writes its files
    result = export_run(
        run_dir,
        format=format,
        int8=int8,
        out=out,
        checkpoint=checkpoint,
        int8_mode=int8_mode,
        opset=opset,
        select=select,
        targets=[t.strip() for t in targets.split(",") if t.strip()] if targets else None,
        budget=budget,
    )
    checkpoint = result["checkpoint"]
    with_qat = result["settings"]["qat"] if qat_epochs is None else qat_epochs > 0
    if with_qat:
        folder = Path(result["report"]).parent
        qat = qat_run(run_dir, out=folder, epochs=qat_epochs or None, checkpoint=checkpoint)
        result["files"]["qat int8"] = {
            "path": qat["file"],
            "size_bytes": qat["size_bytes"],
            "metrics": qat["metrics"]["onnx_int8"],
        }
    table = Table(
        "model", "file", "KiB", "top-1 %", "agree %", "max |diff|", title=escape(str(run_dir))
    )
    torch_top1 = result["metrics"]["torch"]["top1"]
    table.add_row("PyTorch", checkpoint, "", f"{torch_top1:.2f}", "100.00", "")
    for key, entry in result["files"].items():
        parity = entry.get("parity")
        check = f"{parity['max_abs_diff']:.1e} ok" if parity else "-"  # int8 is judged by agreement
        metrics = entry.get(
            "metrics"
        )  # none for a file this machine cannot run (Core ML off macOS)
        if "validation" in entry:
            check = f"spec v{entry['validation']['spec_version']} ok"
        table.add_row(
            key,
            escape(Path(entry["path"]).name),
            f"{entry['size_bytes'] / 1024:.1f}",
            f"{metrics['top1']:.2f}" if metrics else "-",
            f"{metrics.get('agreement', float('nan')):.2f}" if metrics else "-",
            check,
        )
    console.print(table)
    for key, entry in result["files"].items():
        reason = entry.get("validation", {}).get("not_run_because")
        if reason:
            console.print(f"{key}: spec checked, not run ({escape(reason)})", soft_wrap=True)
    for target, picked in result.get("selection", {}).items():
        console.print(
            f"[bold]{escape(target)}[/]: {escape(str(picked['file']))} ({picked['reason']})",
            soft_wrap=True,
        )
        for c in picked["candidates"]:
            console.print(f"  {c['name']}: {escape(c['reason'])}", soft_wrap=True, highlight=False)
    console.print(f"written to {escape(str(Path(result['report']).parent))}", soft_wrap=True)
