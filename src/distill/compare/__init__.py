"""``distill compare``: distillation next to pruning, quantization and export, every row measured the same way.

From one KD recipe (teacher, student, data, KD terms) it makes the models of a list of pipelines (see
:mod:`distill.compare.pipelines`: teacher, scratch and KD students, pruned teachers, ONNX and int8
exports), measures each with the task's own evaluation and the shared latency harness, and writes
``report.md``, a self-contained ``report.html``, ``report.json`` and the accuracy/latency plot.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from distill import report
from distill.compare.context import Context, Produced
from distill.compare.fair import (
    add_speedups,
    bench_note,
    mark_pareto,
    merge_bench,
    pareto_note,
    with_references,
)
from distill.compare.named import packed
from distill.compare.pipelines import (
    DEFAULT_PIPELINES,
    PIPELINES,
    TASK_DEFAULT_PIPELINES,
    default_pipelines,
    skip_reason,
)
from distill.compare.runs import TINY, cache_dir, cached_run
from distill.config.build import resolve_device
from distill.config.load import load_recipe
from distill.config.schema import CompareSpec, override
from distill.errors import DistillError
from distill.export import ParityError
from distill.export.bench import read_results
from distill.models import count_parameters
from distill.report import (
    COMPARE_COLUMNS,
    COMPARE_CONSOLE_COLUMNS,
    measure_row,
    rows_table,
    write_report,
)
from distill.report.measure import serialized_size
from distill.report.write import markdown_table
from distill.runreport import CURVES, add_compare_rows, plot_curves

__all__ = [
    "DEFAULT_PIPELINES",
    "PIPELINES",
    "TASK_DEFAULT_PIPELINES",
    "default_pipelines",
    "TINY",
    "Context",
    "Produced",
    "cache_dir",
    "cached_run",
    "compare",
    "parse_pipelines",
    "add_speedups",
    "mark_pareto",
]


def parse_pipelines(
    names: str | Sequence[str] | None, defaults: Sequence[str] = DEFAULT_PIPELINES
) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> checked pipeline names (``None``: ``defaults``)."""
    if names is None:
        return list(defaults)
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
    tiny_settings = TINY if tiny else []
    # the teacher sees the same data (and, if tiny, the tiny settings)
    if teacher_recipe is not None:
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
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    teacher_recipe: str | Path | None = None,
    tiny: bool | None = None,
    fresh: bool = False,
    prune_ratio: float | None = None,
    sparsity: float | None = None,
    finetune: dict[str, Any] | None = None,
    calibration_samples: int | None = None,
    latency_repeats: int | None = None,
    console: Console | None = None,
    settings: CompareSpec | None = None,
    device: str = "cpu",
    bench_results: Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """Run ``pipelines`` (default: :func:`default_pipelines` of the recipe's task) from the KD ``recipe``;
    write the reports to ``out`` (default ``runs/compare``).

    The settings are the recipe's ``compare:`` section (after ``overrides``; or ``settings``, which
    replaces it), each keyword argument given (not ``None``) overriding its field.
    ``teacher_recipe`` trains the teacher (once, cached like the demo's) when the recipe's teacher weights
    do not exist yet. Pruned teachers get the student's parameter count unless ``prune_ratio`` (share of
    channels removed) or ``sparsity`` (share of weights zeroed) is given, and are fine-tuned with the
    recipe's ``train`` settings updated by ``finetune`` (e.g. ``{"lr": 0.02}``). Static int8 models are
    calibrated on ``calibration_samples`` (512) training inputs (text models get dynamic int8). Pipelines
    that do not apply to the models (channel pruning of a transformer) give ``skipped`` rows. All models
    are made first, then measured one after the other, so the latency runs are not disturbed by training.
    Latency is timed ``latency_repeats`` (50) times at batch 1 and 256 (text: 64, every sequence
    ``max_length`` tokens). Returns the report payload
    (``rows``: one dict per pipeline, with ``pipeline`` and ``runtime``; ``paths``; ``elapsed_s``);
    ``report.json`` also holds the ``settings`` used (the section, with the pipelines that ran).
    ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``) is where the torch models' accuracy is
    measured; ONNX models run on onnxruntime's CPU provider, and latency is always timed on the CPU.
    ``bench_results``: ``distill bench --out`` files (latencies timed on other machines) merged into
    the rows whose file they timed (by SHA-256), with the ratio to the reference row timed alike.
    Each exported row is timed against the teacher made the same way (:mod:`distill.compare.fair`).
    """
    console = console or Console()
    measure_on = resolve_device(device, "--device")
    names = parse_pipelines(pipelines) if pipelines is not None else None  # typos fail first
    _check_repeats(latency_repeats)
    overrides = list(overrides)
    given = {
        "pipelines": names,
        "out": str(out) if out is not None else None,
        "teacher_recipe": str(teacher_recipe) if teacher_recipe is not None else None,
        "tiny": tiny,
        "prune_ratio": prune_ratio,
        "sparsity": sparsity,
        "finetune": finetune,
        "calibration_samples": calibration_samples,
        "latency_repeats": latency_repeats,
        "bench_results": [str(p) for p in bench_results] if bench_results is not None else None,
    }
    if settings is None:
        settings = load_recipe(recipe, overrides).compare
    spec = override(settings, given)
    if names is None and spec.pipelines is not None:
        names = parse_pipelines(spec.pipelines)
    _check_repeats(spec.latency_repeats)
    timed_elsewhere = read_results(list(spec.bench_results))  # bad files fail before any work
    out, tiny = Path(spec.out), spec.tiny
    started = time.perf_counter()
    kd = _kd_recipe(recipe, overrides, out, spec.teacher_recipe, tiny, fresh, console)
    names, added = with_references(names or list(default_pipelines(kd.task)))
    if added:
        console.print(
            f"added {', '.join(added)}: each exported row is timed against the teacher exported the "
            "same way (runtime, precision, threads, batch)",
            soft_wrap=True,
        )
    ctx = Context(
        kd,
        out,
        console,
        fresh,
        spec.prune_ratio,
        spec.sparsity,
        spec.calibration_samples,
        spec.finetune,
    )
    made = {name: _make(ctx, name) for name in names}
    console.rule("measuring")
    rows = [
        _measure(ctx, name, product, spec.latency_repeats, measure_on)
        for name, product in made.items()
    ]
    merge_bench(rows, timed_elsewhere)
    elapsed = time.perf_counter() - started
    applied = [*overrides, *(TINY if tiny else [])]
    runs = _student_runs(made)
    result = _write(
        out,
        rows,
        recipe,
        applied,
        tiny,
        elapsed,
        console,
        ctx.large_batch,
        ctx.task.primary_metric,
        spec.model_copy(update={"pipelines": names}).model_dump(mode="json"),
        runs,
    )
    table = markdown_table(rows, columns(rows, ctx.large_batch, ctx.task.primary_metric))
    for name, run_dir in runs.items():
        title = f"`distill compare {recipe}`: this model is the `{name}` row."
        add_compare_rows(run_dir, title, table)
    return result


def _student_runs(made: dict[str, Produced | str]) -> dict[str, Path]:
    """The trained runs among the pipelines' products (by pipeline), each with its ``curves.png`` (drawn
    here from ``metrics.jsonl`` for a reused run that has none)."""
    runs = {}
    for name, product in made.items():
        artefact = getattr(product, "artefact", None)
        if artefact is None or artefact.name != "model.safetensors":
            continue
        run_dir = artefact.parent
        if (run_dir / CURVES).exists() or plot_curves(run_dir) is not None:
            runs[name] = run_dir
    return runs


def _check_repeats(latency_repeats: Any) -> None:
    if latency_repeats is not None and (
        isinstance(latency_repeats, bool)
        or not isinstance(latency_repeats, int)
        or latency_repeats < 1
    ):
        raise DistillError(
            f"latency_repeats must be an int >= 1, got {latency_repeats!r}; e.g. 50 (5 for a quick look)"
        )


def _make(ctx: Context, name: str) -> Produced | str:
    """The pipeline's product, or why there is none: ``skipped: ...`` (the pipeline does not apply to these
    models) or ``failed: ...`` (an export failed its parity check: reported, not shipped)."""
    why = skip_reason(ctx, name)
    if why is not None:
        ctx.console.print(f"[yellow]{name}[/]: skipped: {why}", soft_wrap=True)
        return f"skipped: {why}"
    try:
        return ctx.get(name)
    except ParityError as err:
        ctx.console.print(f"[red]{name}[/]: failed the ONNX parity check: {err}", soft_wrap=True)
        return f"failed: {err}"


def _measure(
    ctx: Context,
    name: str,
    product: Produced | str,
    repeats: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    if isinstance(product, str):
        return {"name": name, "pipeline": name, "runtime": None, "status": product}
    ctx.console.print(f"measuring {product.name}", soft_wrap=True)
    model, example = product.model, ctx.example
    params, size = product.params, product.size_bytes
    # named inputs: timed through a packing wrapper, sizes of the model
    if isinstance(example, Mapping):
        if params is None:
            params, size = count_parameters(model), serialized_size(model)
        model, example = packed(model, example)
    task = _Recording(ctx.task)
    row = measure_row(
        product.name,
        model,
        task,
        ctx.test_loader(),
        example,
        ctx.teacher_predictions,
        pipeline=name,
        runtime=product.runtime,
        params=params,
        size_bytes=size,
        large_batch=ctx.large_batch,
        repeats=repeats,
        device=device if product.runtime == "torch" else "cpu",  # onnxruntime wrappers: CPU
    )
    extra = {
        k: v
        for k, v in task.metrics.items()
        if k not in (*_ROW_METRICS, task.primary_metric, "images")
    }
    row.update({k: round(v, 2) for k, v in extra.items()})  # e.g. macro_f1 (text), top5
    row["artefact"] = str(product.artefact) if product.artefact else None
    row["precision"] = product.precision
    return row


_ROW_METRICS = ("top1", "nll", "ece", "agreement", "samples")  # already in measure_row's row


class _Recording:
    """A task whose ``evaluate`` keeps the metrics it returned, so a row can add the task's own (macro-F1)."""

    def __init__(self, task: Any) -> None:
        self.task, self.metrics = task, {}

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        self.metrics = self.task.evaluate(*args, **kwargs)
        return self.metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)


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
