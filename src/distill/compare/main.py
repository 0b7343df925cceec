"""The comparison itself: :func:`compare` reads its settings (the ``compare:`` section, then the
keyword arguments), checks the KD recipe, makes every pipeline's model first and then measures them
one after the other, and writes the report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from distill.compare.context import Context, Produced
from distill.compare.fair import (
    merge_bench,
    with_references,
)
from distill.compare.measure import _measure
from distill.compare.pipelines import (
    DEFAULT_PIPELINES,
    PIPELINES,
    default_pipelines,
    skip_reason,
)
from distill.compare.runs import TINY, cached_run
from distill.compare.write import _write, columns
from distill.config.build import resolve_device
from distill.config.load import load_recipe
from distill.config.schema import CompareSpec, override
from distill.errors import DistillError
from distill.export import ParityError
from distill.export.bench import read_results
from distill.report.write import markdown_table
from distill.runreport import CURVES, add_compare_rows, plot_curves


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
