"""``distill compare``: distillation next to pruning, quantization and export, every row measured the same way.

From one KD recipe (teacher, student, data, KD terms) it makes the models of a list of pipelines (see
:mod:`distill.compare.pipelines`: teacher, scratch and KD students, pruned teachers, ONNX and int8
exports), measures each with the task's own evaluation and the shared latency harness, and writes
``report.md``, a self-contained ``report.html``, ``report.json`` and the accuracy/latency plot.

The code: :mod:`.main` (:func:`compare`), :mod:`.pipelines` (what each pipeline makes),
:mod:`.context` (the models and data the pipelines share), :mod:`.runs` (cached training runs),
:mod:`.measure` (one row), :mod:`.fair` (speed-ups against like-made references, Pareto fronts, rows
timed elsewhere), :mod:`.write` (the report), :mod:`.named` (models with named inputs, for timing).
"""

from distill.compare.context import Context, Produced
from distill.compare.fair import add_speedups, mark_pareto
from distill.compare.main import _kd_recipe as _kd_recipe
from distill.compare.main import compare, parse_pipelines
from distill.compare.measure import _measure as _measure
from distill.compare.pipelines import (
    DEFAULT_PIPELINES,
    PIPELINES,
    TASK_DEFAULT_PIPELINES,
    default_pipelines,
)
from distill.compare.runs import TINY, cache_dir, cached_run
from distill.compare.write import columns as columns
from distill.compare.write import int8_slower_note as int8_slower_note

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
