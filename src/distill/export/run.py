"""``export_run``: a trained run's student to ONNX (and int8), checked and evaluated, in ``RUN_DIR/export``."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.config.build import eval_loader as eval_loader  # export's callers read it here
from distill.config.run import CHECKPOINTS, open_run, run_recipe
from distill.config.schema import ExportSpec, override
from distill.data.base import BatchingDataset
from distill.errors import DistillError, did_you_mean
from distill.export import coreml, exporter, runtimes
from distill.export import select as select_files
from distill.export.inputs import Inputs, batch_size, take
from distill.export.quantize import first_and_last_layers, quantize_onnx
from distill.export.runtime import OnnxModule, ParityError, check_parity, merge_reports
from distill.export.select import Timer
from distill.io import check_replaceable, write_json

EXPORT_FORMATS = ("onnx", "coreml")
INT8_MODES = ("static", "dynamic")
FP32_NAME, INT8_NAME, REPORT_NAME = "student.onnx", "student.int8.onnx", "export.json"
COREML_NAME = "student.mlpackage"
EXAMPLE_SAMPLES = 8  # batch the exporter traces with (the batch dimension stays dynamic)
PARITY_SAMPLES = 256  # test inputs the fp32 file is checked on


def export_run(
    run_dir: str | Path,
    format: str | None = None,
    int8: bool | None = None,
    out: str | Path | None = None,
    calibration_batches: int | None = None,
    checkpoint: str | None = None,
    keep_first_last_float: bool | None = None,
    int8_mode: str | None = None,
    opset: int | None = None,
    settings: ExportSpec | None = None,
    select: bool | None = None,
    targets: list[str] | None = None,
    budget: float | None = None,
    timer: Timer | None = None,
) -> dict[str, Any]:
    """Export a run's student to ``out`` (default ``RUN_DIR/export``) and return what ``export.json`` holds.

    The settings are the run's recipe's ``export:`` section (or ``settings``, which replaces it); each
    keyword argument given (not ``None``) overrides its field. The defaults are :class:`ExportSpec`'s:
    onnx, no int8, 8 calibration batches, the ``best`` checkpoint. The settings used are in the result's
    ``settings``.

    Writes ``student.onnx`` (dynamic batch, and sequence length for text; parity-checked against PyTorch on
    up to 256 test inputs, batch by batch) and, with ``int8``, ``student.int8.onnx``. ``int8_mode``
    (default :func:`default_int8_mode`): ``static`` (int8 QDQ calibrated on ``calibration_batches``
    training batches of 64) or ``dynamic`` (int8 weights, activation ranges per batch at run time). With
    ``keep_first_last_float`` the first and last compute layers stay in float, see
    :func:`~distill.export.quantize.first_and_last_layers` (default: yes for one tensor input, no for
    named inputs, where every ``MatMul`` in int8 is the better choice: ``docs/text.md``).
    Each file is evaluated on the test split with the recipe's task; ``agreement`` is the share of test
    inputs where a file's top-1 equals the PyTorch student's. Everything is written to a temporary folder
    first and replaces an earlier export only when complete.

    With ``select``, float16, int8 static/dynamic and per-layer mixed files are made too and, per runtime
    in ``targets``, the fastest file within ``budget`` points of the PyTorch student's primary metric is
    chosen (:mod:`distill.export.select`; ``timer(file, runtime) -> ms`` replaces the latency harness,
    e.g. in tests); ``selection`` in the result holds the choice and a reason per candidate.
    """
    run_dir = Path(run_dir)
    given = {
        "format": format,
        "int8": int8,
        "calibration_batches": calibration_batches,
        "checkpoint": checkpoint,
        "keep_first_last_float": keep_first_last_float,
        "int8_mode": int8_mode,
        "opset": opset,
        "select": select,
        "targets": targets,
        "budget": budget,
    }
    _check_settings(given)  # a bad argument fails before the run is read
    spec = override(settings if settings is not None else run_recipe(run_dir).export, given)
    _check_settings(spec.model_dump())
    int8, checkpoint = spec.int8, spec.checkpoint
    out_dir = Path(out) if out is not None else run_dir / "export"
    check_replaceable(out_dir, REPORT_NAME, run_dir)
    run = open_run(run_dir, checkpoint)
    student, task, train, test_loader = run.student, run.task, run.train_data, run.test_loader()
    batches = parity_batches(task, test_loader, PARITY_SAMPLES)
    if spec.format == "coreml":
        _check_coreml_inputs(batches[0])  # before the ONNX export and its evaluation
    if int8 and spec.int8_mode == "static" and isinstance(batches[0], Mapping):
        raise DistillError(
            "--int8-mode static (export.int8_mode) calibrates models with one tensor input; models "
            "with named inputs (text, causal LMs) quantize with --int8-mode dynamic"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        int8_options = {
            "calibration_batches": spec.calibration_batches,
            "keep": spec.keep_first_last_float
            if spec.keep_first_last_float is not None
            else not isinstance(batches[0], Mapping),
            "mode": spec.int8_mode or default_int8_mode(batches[0]),
        }
        result = _export_all(
            student,
            task,
            train,
            test_loader,
            batches,
            staging,
            int8_options if int8 else None,
            spec.opset,
        )
        if spec.format == "coreml":
            result["files"]["coreml"] = _export_coreml(student, batches[0], staging / COREML_NAME)
        if spec.select:
            result["selection"] = _select(
                spec, student, task, train, test_loader, staging, result, int8_options, timer
            )
        result.update(
            run_dir=str(run_dir),
            checkpoint=checkpoint,
            format=spec.format,
            settings=spec.model_dump(mode="json"),
        )
        write_json(staging / REPORT_NAME, _relative(result, staging))
        _swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result["files"] = {
        k: {**v, "path": str(out_dir / Path(v["path"]).name)} for k, v in result["files"].items()
    }
    for chosen in result.get("selection", {}).values():
        if chosen["file"] is not None:
            chosen["path"] = str(out_dir / chosen["file"])
    result["report"] = str(out_dir / REPORT_NAME)
    return result


def _check_settings(values: Mapping[str, Any]) -> None:
    """One line for a bad export setting; ``None`` values are not given and not checked."""
    format, checkpoint = values.get("format"), values.get("checkpoint")
    calibration_batches, int8_mode = values.get("calibration_batches"), values.get("int8_mode")
    if format is not None and format not in EXPORT_FORMATS:
        raise DistillError(
            f"unknown export format {format!r}.{did_you_mean(str(format), EXPORT_FORMATS)} "
            f"Supported: {', '.join(EXPORT_FORMATS)}"
        )
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise DistillError(
            f"unknown checkpoint {checkpoint!r}.{did_you_mean(str(checkpoint), CHECKPOINTS)} "
            "Use best or last"
        )
    if calibration_batches is not None and (
        not isinstance(calibration_batches, int) or calibration_batches < 1
    ):
        raise DistillError(f"calibration_batches must be an int >= 1, got {calibration_batches!r}")
    for target in values.get("targets") or ():
        if target not in runtimes.RUNTIMES:
            raise DistillError(
                f"unknown target runtime {target!r}."
                f"{did_you_mean(str(target), runtimes.RUNTIMES.names())} "
                f"Use one of {', '.join(runtimes.RUNTIMES.names())}"
            )
    budget = values.get("budget")
    if budget is not None and (
        isinstance(budget, bool)
        or not isinstance(budget, (int, float))
        or not math.isfinite(budget)
        or budget < 0
    ):
        raise DistillError(f"budget must be >= 0 points, got {budget!r}; e.g. 1.0")
    if int8_mode is not None and int8_mode not in INT8_MODES:
        raise DistillError(
            f"unknown int8 mode {int8_mode!r}.{did_you_mean(str(int8_mode), INT8_MODES)} "
            "Use static or dynamic (or leave it unset for the default)"
        )


def _export_all(
    student: nn.Module,
    task: Any,
    train: Any,
    test_loader: Any,
    batches: list[Inputs],
    staging: Path,
    int8: dict[str, Any] | None,
    opset: int | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    fp32 = exporter.export_onnx(
        student, take(batches[0], EXAMPLE_SAMPLES), staging / FP32_NAME, opset=opset, check=False
    )
    parity = merge_reports([check_parity(student, fp32, b) for b in batches])
    if not parity.ok:
        raise ParityError(parity, fp32)
    files: dict[str, Any] = {
        "fp32": {"path": str(fp32), "parity": parity.to_dict(), "format": "onnx float32"}
    }
    if int8 is not None:
        static = int8["mode"] == "static"
        calibration = (
            list(_calibration(task, train, int8["calibration_batches"])) if static else None
        )
        keep = first_and_last_layers(fp32) if int8["keep"] else []  # recorded in export.json
        q = quantize_onnx(
            fp32, staging / INT8_NAME, mode=int8["mode"], calibration=calibration, keep_float=keep
        )
        files["int8"] = {
            "path": str(q),
            "format": "onnx int8 (static QDQ, per-channel weights)"
            if static
            else "onnx int8 (dynamic: int8 weights, activation ranges per batch)",
            "mode": int8["mode"],
            "calibration_samples": sum(batch_size(b) for b in calibration) if calibration else 0,
            "float_layers": keep,
        }
    metrics = {"torch": rounded_metrics(task.evaluate(student, test_loader))}
    for entry in files.values():
        module = OnnxModule(entry["path"])
        entry["size_bytes"] = module.size_bytes
        entry["metrics"] = rounded_metrics(task.evaluate(module, test_loader, student))
    return {"files": files, "metrics": metrics, "seconds": round(time.perf_counter() - started, 1)}


def _check_coreml_inputs(example: Inputs) -> None:
    if isinstance(example, Mapping):
        raise DistillError(
            "--format coreml takes models with one tensor input; models with named inputs (text) "
            "export to ONNX: use --format onnx"
        )


def _export_coreml(student: nn.Module, example: Inputs, path: Path) -> dict[str, Any]:
    """``student.mlpackage`` (float32, flexible batch 1..256) and what its spec declares. It is not run
    here: Core ML runs only on macOS (``runs_here``, ``not_run_because``)."""
    _check_coreml_inputs(example)
    written = coreml.export_coreml(student, example, path)
    check = coreml.validate_coreml(written, tuple(example.shape[1:]))
    size = sum(f.stat().st_size for f in written.rglob("*") if f.is_file())
    return {
        "path": str(written),
        "format": "coreml mlprogram float32 (flexible batch 1..256)",
        "size_bytes": size,
        "validation": check,
    }


def _select(
    spec: ExportSpec,
    student: nn.Module,
    task: Any,
    train: Any,
    test_loader: Any,
    staging: Path,
    result: dict[str, Any],
    int8: dict[str, Any],
    timer: Timer | None,
) -> dict[str, Any]:
    """Candidates made once, then measured and chosen per target (``export.json``: ``selection``)."""
    fp32 = Path(result["files"]["fp32"]["path"])
    primary = task.primary_metric
    calibration = list(_calibration(task, train, spec.calibration_batches))
    keep = first_and_last_layers(fp32) if int8["keep"] else []
    candidates = select_files.make_candidates(fp32, staging, calibration, keep)
    threads = spec.select_threads or None
    timer = timer or select_files.latency_timer(spec.select_batch, threads)
    layers = staging / ".layers"
    layers.mkdir(exist_ok=True)

    def evaluate(module: nn.Module) -> float:
        return task.evaluate(module, test_loader, student)[primary]

    reference = result["metrics"]["torch"][primary]
    selection = {}
    try:
        for target in spec.targets:
            mixed = select_files.mixed_candidate(fp32, staging, layers, calibration, target, timer)
            found = select_files.select(
                [*candidates, mixed], target, evaluate, reference, spec.budget, timer
            )
            found.update(metric=primary, reference=reference, budget=spec.budget)
            found.update(batch=spec.select_batch, threads=threads or "all")
            selection[target] = found
    finally:
        shutil.rmtree(layers, ignore_errors=True)
    return selection


def load_student(run_dir: str | Path, checkpoint: str = "best") -> nn.Module:
    """A run's student with its ``best`` or ``last`` weights, in eval mode (the teacher is not needed)."""
    return open_run(run_dir, checkpoint).student


def default_int8_mode(inputs: Inputs) -> str:
    """``dynamic`` for models with named inputs (token ids: transformers), ``static`` for one tensor input.

    Transformers' activations have outliers that one calibrated range per tensor clips, their LayerNorm,
    Softmax and GELU stay float either way, and their cost is in the ``MatMul``s that dynamic quantization
    makes int8; static QDQ wins on convolutional networks, whose Conv/ReLU chains fuse into integer kernels.
    """
    return "dynamic" if isinstance(inputs, Mapping) else "static"


def parity_batches(task: Any, loader: Any, n: int) -> list[Inputs]:
    """The loader's batches of model inputs (``task.split(batch).inputs``) covering its first ``n`` samples,
    the last one cut; each batch as the loader made it (text: padded to its own longest text)."""
    batches, have = [], 0
    for raw in loader:
        x = task.split(raw).inputs
        batches.append(take(x, n - have))
        have += batch_size(batches[-1])
        if have >= n:
            break
    if not batches:
        raise DistillError("the test split is empty; the export is checked on test inputs")
    return batches


def example_inputs(task: Any, loader: Any, n: int) -> Inputs:
    """The first ``n`` model inputs of ``loader`` as one batch: a tensor, or a dict of tensors (text) taken
    from the first batch alone (batches are padded to different lengths)."""
    batches = parity_batches(task, loader, n)
    if isinstance(batches[0], Mapping):
        return batches[0]
    return torch.cat(batches)


def _calibration(task: Any, train: Any, batches: int) -> Iterator[Inputs]:
    """``batches`` shuffled (seeded) training batches of 64 inputs, without augmentation."""
    if isinstance(train, BatchingDataset):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
        loader = train.loader(64, order)
    else:
        loader = train
    for i, raw in enumerate(loader):
        if i >= batches:
            break
        yield task.split(raw).inputs


def rounded_metrics(m: dict[str, float]) -> dict[str, float]:
    """Evaluation metrics rounded to 4 decimals, as the export and QAT reports store them."""
    return {k: round(v, 4) for k, v in m.items()}


def _relative(result: dict[str, Any], staging: Path) -> dict[str, Any]:
    files = {k: {**v, "path": Path(v["path"]).name} for k, v in result["files"].items()}
    return {**result, "files": files}


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by the complete ``staging`` folder (the old one is removed only after)."""
    old = None
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DistillError(f"{out_dir} exists and is not a folder; give --out another path")
        old = out_dir.with_name(f".{out_dir.name}.old-{int(time.time() * 1000)}")
        out_dir.rename(old)
    # mkdtemp makes it private; give it a normal folder's mode
    staging.chmod(0o777 & ~exporter._umask())
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
