"""``distill handback RUN_DIR``: a thin shell over :func:`distill.api.handback_run`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from distill.api import handback_run
from distill.cli import app

console = Console()


@app.command()
def handback(
    run_dir: Annotated[Path, typer.Argument(help="a folder written by `distill train`")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="auto (the student's family), hf (save_pretrained + tokenizer), ultralytics "
            "(a YOLO() checkpoint) or image (config.json with a timm-style pretrained_cfg + "
            "model.safetensors)",
        ),
    ] = "auto",
    out: Annotated[
        Path | None, typer.Option(help="output folder (default: RUN_DIR/<format>)")
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(help="best or last (default: the recipe's export.checkpoint, best)"),
    ] = None,
) -> None:
    """Save a trained student in its family's own format (transformers, Ultralytics, timm-style), reload
    it that way and check it gives the student's outputs."""
    result = handback_run(run_dir, format=format, out=out, checkpoint=checkpoint)
    check = result["check"]
    console.print(
        f"{result['format']}: {escape(result['student'])} ({result['checkpoint']}) written to "
        f"{escape(result['folder'])}; reloaded, max |diff| {check['max_abs_diff']:.1e} on "
        f"{check['samples']} test inputs",
        soft_wrap=True,
        highlight=False,
    )
    for name in result["files"]:
        console.print(f"  {escape(name)}", soft_wrap=True, highlight=False)
