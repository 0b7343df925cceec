"""Core ML: a student converted to an ML program (``student.mlpackage``) with coremltools, and the file
checked without running it.

Core ML runs models only on macOS (coremltools' native ``libcoremlpython`` is built for macOS alone), so on
Linux the converter runs and the file's spec is read and checked (:func:`validate_coreml`), but no
prediction is made and nothing is timed. :class:`CoreMLModule` runs the file behind the
:class:`~distill.export.runtime.RuntimeModule` interface, so parity and the latency harness take it
unchanged; elsewhere it raises a one-line error saying why.
"""

from __future__ import annotations

import platform
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.errors import DistillError, first_line
from distill.export._deps import require
from distill.export.runtime import RuntimeModule

PRECISIONS = ("float32", "float16")
INPUT_NAME, OUTPUT_NAME = "input", "output"
MAX_BATCH = 256  # the flexible batch's upper bound: distill compare times batch 256
DEPLOYMENT_TARGET = "iOS16"  # ML programs from macOS 13 / iOS 16 on: spec version 7
PRECISION_KEY = "distill.precision"  # user metadata: the precision the file was converted at


def can_run() -> str | None:
    """``None`` where Core ML can run a file (macOS), else why it cannot."""
    if platform.system() != "Darwin":
        return f"Core ML runs models only on macOS, not on {platform.system()}"
    return None


def export_coreml(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    precision: str = "float32",
    batch: int | None = None,
) -> Path:
    """``model`` as a Core ML ML program at ``path`` (a ``.mlpackage`` folder, replaced if there), for
    inputs shaped like ``example``'s samples: ``torch.jit.trace``, then ``coremltools.convert`` to an
    ``mlprogram`` (deployment target iOS 16 / macOS 13). ``precision``: ``float32`` or ``float16``
    (weights and compute; the input and output stay float32). ``batch``: ``None`` for a flexible batch
    (1 to 256, default 1), else that fixed batch. One tensor input (``input``), one output (``output``)."""
    if precision not in PRECISIONS:
        raise DistillError(f"unknown Core ML precision {precision!r}; use float32 or float16")
    if isinstance(example, Mapping) or not isinstance(example, torch.Tensor):
        raise DistillError(
            "Core ML export takes models with one tensor input; models with named inputs (text) "
            "export to ONNX (distill export RUN_DIR)"
        )
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise DistillError(f"Core ML batch must be an int >= 1 or None (flexible), got {batch!r}")
    ct = require("coremltools", extra="coreml")
    sample = tuple(example.shape[1:])
    traced_batch = batch or 1
    example = example[:1].detach().cpu().float().expand(traced_batch, *sample).contiguous()
    dim: Any = batch if batch is not None else ct.RangeDim(1, MAX_BATCH, default=1)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # coremltools converts TorchScript traces (its torch.export path needs dynamic shapes
            # declared per model); torch warns that jit.trace is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(model.eval().cpu(), example)
        mlmodel = ct.convert(
            traced,
            inputs=[
                ct.TensorType(
                    name=INPUT_NAME, shape=ct.Shape(shape=(dim, *sample)), dtype=np.float32
                )
            ],
            outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16
            if precision == "float16"
            else ct.precision.FLOAT32,
            minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
        )
    except Exception as err:  # noqa: BLE001 - tracing and coremltools raise many types
        raise DistillError(
            f"could not convert {type(model).__name__} to Core ML ({first_line(err, 240)}); "
            "use the ONNX runtimes for it"
        ) from None
    mlmodel.user_defined_metadata[PRECISION_KEY] = precision
    path = Path(path)
    if path.suffix != ".mlpackage":
        raise DistillError(
            f"a Core ML ML program is a .mlpackage folder, got {path}; name it .mlpackage"
        )
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(path))
    return path


def validate_coreml(
    path: str | Path, sample_shape: tuple[int, ...], batch: int | None = None
) -> dict[str, Any]:
    """What the file at ``path`` declares, read without running it (``MLModel(skip_model_load=True)``),
    checked against what :func:`export_coreml` writes: an ML program, spec version >= 7, one float32 input
    ``input`` of shape ``(batch, *sample_shape)`` (``batch`` ``None``: flexible 1..256), the output
    ``output``, and for float16 files float16 weights in the program. A mismatch raises a one-line error."""
    ct = require("coremltools", extra="coreml")
    path = Path(path)
    if not path.exists():
        raise DistillError(
            f"file {path} not found; export one first (distill export RUN_DIR --format coreml)"
        )
    try:
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as err:  # noqa: BLE001 - coremltools raises many types for bad files
        raise DistillError(
            f"{path} is not a Core ML file coremltools can read ({first_line(err, 240)}); export it again"
        ) from None
    kind = spec.WhichOneof("Type")
    inputs, outputs = list(spec.description.input), list(spec.description.output)
    problems = []
    if kind != "mlProgram":
        problems.append(f"model type {kind}, not mlProgram")
    if spec.specificationVersion < 7:
        problems.append(f"spec version {spec.specificationVersion} < 7")
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        problems.append(
            f"inputs {[i.name for i in inputs]} and outputs {[o.name for o in outputs]}, "
            f"not [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]"
        )
    shape: list[Any] = []
    dtype = "?"
    if inputs:
        array = inputs[0].type.multiArrayType
        dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType)
        ranges = [(r.lowerBound, r.upperBound) for r in array.shapeRange.sizeRanges]
        if ranges:
            shape = [lo if lo == hi else [lo, hi] for lo, hi in ranges]
        else:
            shape = list(array.shape)
        want: list[Any] = [batch if batch is not None else [1, MAX_BATCH], *sample_shape]
        if shape != want:
            problems.append(f"input shape {shape}, expected {want}")
        if dtype != "FLOAT32":
            problems.append(f"input dtype {dtype}, expected FLOAT32")
    precision = spec.description.metadata.userDefined.get(PRECISION_KEY, "?")
    has_fp16 = "FLOAT16" in str(spec.mlProgram) if kind == "mlProgram" else False
    if precision == "float16" and not has_fp16:
        problems.append("declared float16 but the program has no float16 tensors")
    if precision == "float32" and has_fp16:
        problems.append("declared float32 but the program has float16 tensors")
    if problems:
        raise DistillError(f"{path.name} is not the Core ML file expected: {'; '.join(problems)}")
    return {
        "spec_version": spec.specificationVersion,
        "model_type": kind,
        "input": {"name": INPUT_NAME, "shape": shape, "dtype": dtype},
        "output": OUTPUT_NAME,
        "precision": precision,
        "coremltools": ct.__version__,
        "runs_here": can_run() is None,
        "not_run_because": can_run(),
    }


class CoreMLModule(RuntimeModule):
    """A ``.mlpackage`` run by Core ML (``MLModel.predict``, all compute units): macOS only. Elsewhere
    constructing it raises a one-line error (:func:`can_run`). ``threads`` must be ``None``: Core ML
    chooses its own threads and devices."""

    runtime = "coreml"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        self.path, self.threads = Path(path), threads
        reason = can_run()
        if reason is not None:
            raise DistillError(
                f"{reason}; {self.path.name} can be checked here (validate_coreml) but not run or timed"
            )
        if threads is not None:
            raise DistillError(
                f"Core ML picks its own threads; time it with threads None (--threads 0), not {threads}"
            )
        ct = require("coremltools", extra="coreml")
        try:
            self.model = ct.models.MLModel(str(self.path))
        except Exception as err:  # noqa: BLE001 - coremltools raises many types
            raise DistillError(
                f"Core ML cannot load {self.path} ({first_line(err, 240)}); export it again"
            ) from None

    @property
    def size_bytes(self) -> int:
        """Bytes on disk of the whole ``.mlpackage`` folder."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def with_threads(self, threads: int | None) -> CoreMLModule:
        return type(self)(self.path, threads)

    def forward(self, x: Any = None, **inputs: torch.Tensor) -> torch.Tensor:
        if x is None or inputs or isinstance(x, Mapping):
            raise DistillError(f"{self.path.name} takes one input tensor")
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.model.predict({INPUT_NAME: array})[OUTPUT_NAME].copy())
