"""QAT int8 (torchao PT2E) against the float student it starts from, on a trained run: accuracy of the float
student, the fake-quant PyTorch model and the int8 ONNX file on the run's test split, with the time it took.
Writes ``docs/benchmarks/qat.md`` and ``.json``; the issue's bar is int8 within 1.0 point of float.

    python benchmarks/qat.py RUN_DIR --epochs 1 --out /tmp/qat-bench

RUN_DIR is read, never written (QAT's files go to ``--out``). Each ``--seed`` runs QAT again with that
training seed (``train.seed`` of the recipe is replaced for the fine-tuning only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

from distill.compress.qat import qat_run
from distill.config.run import run_recipe
from distill.config.schema import QatSpec

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def one(run_dir: str, out: Path, epochs: int, seed: int, lr: float | None = None) -> dict:
    """``qat_run`` with the recipe's seed replaced by ``seed`` (a copy of the run's recipe is not needed:
    the seed only drives the fine-tuning's data order)."""
    import distill.compress.qat as qat

    original = qat.open_run

    def reseeded(*args, **kwargs):
        run = original(*args, **kwargs)
        run.recipe = run.recipe.model_copy(
            update={"train": run.recipe.train.model_copy(update={"seed": seed})}
        )
        return run

    qat.open_run = reseeded
    try:
        started = time.perf_counter()
        spec = QatSpec(epochs=epochs, lr=lr)
        result = qat_run(run_dir, out=out / f"seed{seed}-lr{lr}", settings=spec)
    finally:
        qat.open_run = original
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["seed"] = seed
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", default="/tmp/qat-bench")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--lr", type=float, default=None, help="default: the recipe's train.lr / 10"
    )
    parser.add_argument("--report", default="qat", help="docs/benchmarks/<report>.md and .json")
    args = parser.parse_args()
    recipe = run_recipe(args.run_dir)
    rows = [one(args.run_dir, Path(args.out), args.epochs, s, args.lr) for s in args.seed]
    gaps = [r["metrics"]["onnx_int8"]["top1"] - r["metrics"]["float"]["top1"] for r in rows]
    report = {
        "command": "python benchmarks/qat.py " + " ".join(sys.argv[1:]),
        "run": {"dir": args.run_dir, "recipe": recipe.name, "epochs": recipe.train.epochs},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores "
        f"(shared with other work; load average at the end {os.getloadavg()[0]:.1f})",
        "versions": {p: version(p) for p in ("torch", "torchao", "onnxruntime")},
        "cuda": torch.cuda.is_available(),
        "rows": rows,
        "int8_minus_float": {
            "mean": statistics.mean(gaps),
            "std": statistics.stdev(gaps) if len(gaps) > 1 else None,
        },
        "within_1_point": all(abs(g) <= 1.0 for g in gaps),
    }
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / f"{args.report}.json").write_text(json.dumps(report, indent=1) + "\n")
    (DOCS / f"{args.report}.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [
        "# QAT int8 (torchao PT2E) against the float student",
        "",
        f"Command: `{report['command']}`  ",
        f"Run: `{report['run']['dir']}` ({report['run']['recipe']}, {report['run']['epochs']} epochs)  ",
        f"Machine: {report['machine']}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
        "| seed | QAT epochs | lr | device | float top-1 % | fake-quant top-1 % | int8 ONNX top-1 % "
        "| int8 - float | agreement % | int8 layers | size KiB | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        m, seed = r["metrics"], r["seed"]
        gap = m["onnx_int8"]["top1"] - m["float"]["top1"]
        lines.append(
            f"| {seed} | {r['epochs']} | {r['lr']:g} | {r['device']} | {m['float']['top1']:.2f} "
            f"| {m['fake_quant']['top1']:.2f} | {m['onnx_int8']['top1']:.2f} | {gap:+.2f} "
            f"| {m['onnx_int8']['agreement']:.2f} | {', '.join(r['int8_layers'])} "
            f"| {r['size_bytes'] / 1024:.1f} | {r['seconds']} |"
        )
    gap = report["int8_minus_float"]
    std = f" ± {gap['std']:.2f}" if gap["std"] is not None else " (one seed)"
    verdict = "within" if report["within_1_point"] else "NOT within"
    lines += ["", f"int8 - float: {gap['mean']:+.2f}{std} points: {verdict} 1.0 point.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
