"""``distill compare``: distillation next to pruning, quantization and export, every row measured the same way.

From one KD recipe (teacher, student, data, KD terms) it makes the models of a list of pipelines (see
:mod:`distill.compare.pipelines`: teacher, scratch and KD students, pruned teachers, ONNX and int8
exports), measures each with the task's own evaluation and the shared latency harness, and writes
``report.md``, a self-contained ``report.html``, ``report.json`` and the accuracy/latency plot.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from distill.compare.context import Context, Produced
from distill.compare.pipelines import DEFAULT_PIPELINES, PIPELINES
from distill.compare.runs import TINY, cache_dir, cached_run
from distill.errors import DistillError

__all__ = [
    "DEFAULT_PIPELINES",
    "PIPELINES",
    "TINY",
    "Context",
    "Produced",
    "cache_dir",
    "cached_run",
    "compare",
    "parse_pipelines",
]


def parse_pipelines(names: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> checked pipeline names (``None``: the default list)."""
    if names is None:
        return list(DEFAULT_PIPELINES)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise DistillError(
            f"no pipelines given; name some, e.g. --pipelines {','.join(DEFAULT_PIPELINES[:3])}"
        )
    for name in names:
        PIPELINES.get(name)  # unknown names: one line with close matches and the list
    return list(dict.fromkeys(names))


def _kd_recipe(
    recipe: str | Path,
    overrides: list[str],
    out: Path,
    teacher_recipe: str | Path | None,
    tiny: bool,
    fresh: bool,
    console: Console,
) -> Any:
    from distill.config.load import load_recipe

    tiny_settings = TINY if tiny else []
    if (
        teacher_recipe is not None
    ):  # the teacher sees the same data (and, if tiny, the tiny settings)
        shared = [o for o in overrides if o.startswith("data.")] + tiny_settings
        teacher_dir = cached_run(teacher_recipe, shared, fresh, console)
        overrides = [*overrides, f"teacher.weights={teacher_dir / 'model.safetensors'}"]
    overrides = [*overrides, *tiny_settings]
    kd = load_recipe(recipe, [*overrides, f"output={out / 'student-kd'}"])
    if kd.teacher is None or not kd.distill.terms:
        raise DistillError(
            f"compare needs a KD recipe (a teacher and distill.terms); {recipe} has "
            f"{'no teacher' if kd.teacher is None else 'no distill.terms'}: use e.g. fashion_mnist/kd"
        )
    if kd.teacher.weights is None or not Path(kd.teacher.weights).exists():
        raise DistillError(
            f"teacher weights {kd.teacher.weights!r} of {recipe} not found; train the teacher first, set "
            "teacher.weights=..., or pass --teacher-recipe RECIPE to train (and cache) it"
        )
    return kd


def compare(
    recipe: str | Path,
    pipelines: str | Sequence[str] | None = None,
    out: str | Path = "runs/compare",
    overrides: Sequence[str] = (),
    teacher_recipe: str | Path | None = None,
    tiny: bool = False,
    fresh: bool = False,
    prune_ratio: float | None = None,
    sparsity: float | None = None,
    finetune: dict[str, Any] | None = None,
    calibration_samples: int = 512,
    latency_repeats: int = 50,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run ``pipelines`` (default: :data:`DEFAULT_PIPELINES`) from the KD ``recipe``; write the reports.

    ``teacher_recipe`` trains the teacher (once, cached like the demo's) when the recipe's teacher weights
    do not exist yet. Pruned teachers get the student's parameter count unless ``prune_ratio`` (share of
    channels removed) or ``sparsity`` (share of weights zeroed) is given, and are fine-tuned with the
    recipe's ``train`` settings updated by ``finetune`` (e.g. ``{"lr": 0.02}``). Static int8 models are
    calibrated on ``calibration_samples`` training inputs. All models are made first, then measured one
    after the other, so the latency runs are not disturbed by training. Returns the report payload
    (``rows``: one dict per pipeline, with ``pipeline`` and ``runtime``; ``paths``; ``elapsed_s``).
    """
    console = console or Console()
    names = parse_pipelines(pipelines)
    out = Path(out)
    started = time.perf_counter()
    overrides = list(overrides)
    kd = _kd_recipe(recipe, overrides, out, teacher_recipe, tiny, fresh, console)
    ctx = Context(kd, out, console, fresh, prune_ratio, sparsity, calibration_samples, finetune)
    made = {name: _make(ctx, name) for name in names}
    console.rule("measuring")
    rows = [_measure(ctx, name, product, latency_repeats) for name, product in made.items()]
    elapsed = time.perf_counter() - started
    return _write(out, rows, recipe, [*overrides, *(TINY if tiny else [])], tiny, elapsed, console)


def _make(ctx: Context, name: str) -> Produced | str:
    """The pipeline's product, or the reason an export failed its parity check (reported, not shipped)."""
    try:
        from distill.export import ParityError
    except ImportError:
        ParityError = ()  # noqa: N806 - no export extra: no parity failures either
    try:
        return ctx.get(name)
    except ParityError as err:  # type: ignore[misc]
        ctx.console.print(f"[red]{name}[/]: failed the ONNX parity check: {err}", soft_wrap=True)
        return f"failed: {err}"


def _measure(ctx: Context, name: str, product: Produced | str, repeats: int) -> dict[str, Any]:
    from distill.report import measure_row

    if isinstance(product, str):
        return {"name": name, "pipeline": name, "runtime": None, "status": product}
    ctx.console.print(f"measuring {product.name}", soft_wrap=True)
    row = measure_row(
        product.name,
        product.model,
        ctx.task,
        ctx.test_loader(),
        ctx.example,
        ctx.teacher,
        pipeline=name,
        runtime=product.runtime,
        params=product.params,
        size_bytes=product.size_bytes,
        repeats=repeats,
    )
    row["artefact"] = str(product.artefact) if product.artefact else None
    return row


def _write(
    out: Path,
    rows: list[dict[str, Any]],
    recipe: str | Path,
    overrides: list[str],
    tiny: bool,
    elapsed: float,
    console: Console,
) -> dict[str, Any]:
    from distill.report import COMPARE_COLUMNS, COMPARE_CONSOLE_COLUMNS, rows_table, write_report

    notes = (
        "Accuracy: the last epoch's test top-1. Agreement: share of test inputs where the model's top-1 "
        "equals the teacher's. Latency: median over repeated forward passes on CPU, after warm-up; "
        "'1 thread' pins one intra-op thread, the others use all. Size: safetensors bytes for PyTorch "
        "rows, the .onnx file for onnxruntime rows. Unstructured sparsity leaves the dense size and "
        f"latency unchanged ('nonzero' counts what is left). Whole comparison: {elapsed:.0f} s."
    )
    failed = [r for r in rows if r.get("status", "ok") != "ok"]
    if failed:
        notes += "\n\n" + " ".join(f"{r['pipeline']}: {r['status']}." for r in failed)
    paths = write_report(
        out,
        rows,
        f"distill compare: {recipe}",
        notes,
        columns=COMPARE_COLUMNS,
        plot_keys=("latency_ms_b1_t1", "size_bytes", "pipeline"),
        html=True,
        recipe=str(recipe),
        overrides=list(overrides),
        elapsed_s=round(elapsed, 1),
        tiny=tiny,
    )
    console.print(rows_table(rows, f"distill compare: {recipe}", COMPARE_CONSOLE_COLUMNS))
    console.print(
        f"report: {paths['md']}  html: {paths['html']}  ({elapsed:.0f} s)", soft_wrap=True
    )
    return {"rows": rows, "paths": {k: str(v) for k, v in paths.items()}, "elapsed_s": elapsed}
