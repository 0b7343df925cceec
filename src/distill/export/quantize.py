"""Post-training int8 quantization of ONNX files with onnxruntime's quantization tools.

* ``static`` (default): weights and activations in int8, QDQ format (QuantizeLinear/DequantizeLinear pairs
  that onnxruntime fuses into integer kernels). Activation ranges come from calibration batches of real
  training inputs; weights are quantized per output channel (symmetric int8), activations per tensor
  (asymmetric uint8).
* ``dynamic``: int8 weights, activation ranges computed at run time for each batch; no calibration.

The quantized file is checked to load in onnxruntime before it is written; see ``docs/export.md``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from distill.errors import DistillError, did_you_mean, first_line
from distill.export._deps import require
from distill.export.runtime import inference_session

MODES = ("dynamic", "static")
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
DYNAMIC_DEFAULT_OPS = ("MatMul", "Gemm", "Conv")


def quantize_onnx(
    onnx_path: str | Path,
    out_path: str | Path,
    mode: Literal["dynamic", "static"] = "static",
    calibration: Iterable[torch.Tensor] | None = None,
    per_channel: bool = True,
    op_types: Sequence[str] | None = None,
    keep_float: Sequence[str] | Literal["first_last"] = "first_last",
    calibrate_method: str = "minmax",
) -> Path:
    """Quantize ``onnx_path`` to int8 and write ``out_path`` (returned).

    ``calibration``: input batches ``(B, ...)`` (static mode; a few hundred real training samples are
    enough). ``op_types``: ONNX operator types to quantize (default: every type onnxruntime can quantize in
    that mode). ``keep_float``: node names to leave in float32; the default ``"first_last"`` keeps the first
    and last compute layers (:func:`first_and_last_layers`), ``()`` quantizes every layer it can.
    ``calibrate_method``: ``minmax``, ``entropy`` or ``percentile``.
    """
    quantization = require("onnxruntime.quantization")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if mode not in MODES:
        raise DistillError(
            f"unknown quantization mode {mode!r}.{did_you_mean(str(mode), MODES)} Use static or dynamic"
        )
    if not onnx_path.is_file():
        raise DistillError(f"ONNX file {onnx_path} not found; export the model first")
    if mode == "static" and calibration is None:
        raise DistillError(
            "static quantization needs calibration data (input batches, e.g. a few training "
            "batches); pass calibration=... or use mode='dynamic'"
        )
    if calibrate_method not in CALIBRATION_METHODS:
        raise DistillError(
            f"unknown calibrate_method {calibrate_method!r}."
            f"{did_you_mean(calibrate_method, CALIBRATION_METHODS)} Use one of {', '.join(CALIBRATION_METHODS)}"
        )
    _check_op_types(op_types, mode)
    if isinstance(keep_float, str):
        if keep_float != "first_last":
            raise DistillError(
                f"keep_float must be a list of node names or 'first_last', got {keep_float!r}"
            )
        keep_float = first_and_last_layers(onnx_path)
    _check_node_names(onnx_path, keep_float)
    with tempfile.TemporaryDirectory(
        dir=out_path.parent if out_path.parent.exists() else None
    ) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "quantized.onnx"
        _prepare(quantization, onnx_path, prepared)
        common: dict[str, Any] = {
            "per_channel": per_channel,
            "op_types_to_quantize": list(op_types) if op_types else None,
            "nodes_to_exclude": list(keep_float) or None,
        }
        try:
            if mode == "static":
                quantization.quantize_static(
                    str(prepared),
                    str(quantized),
                    _Reader(_input_name(prepared), calibration),  # type: ignore[arg-type]
                    quant_format=quantization.QuantFormat.QDQ,
                    activation_type=quantization.QuantType.QUInt8,
                    weight_type=quantization.QuantType.QInt8,
                    calibrate_method=getattr(
                        quantization.CalibrationMethod, CALIBRATION_METHODS[calibrate_method]
                    ),
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
                    **common,
                )
            else:
                if common["op_types_to_quantize"] is None:
                    common["op_types_to_quantize"] = list(DYNAMIC_DEFAULT_OPS)
                quantization.quantize_dynamic(
                    str(prepared),
                    str(quantized),
                    weight_type=quantization.QuantType.QUInt8,  # ConvInteger has uint8 kernels only
                    **common,
                )
        except DistillError:
            raise
        except Exception as err:  # noqa: BLE001 - onnxruntime's quantizer raises plain exceptions
            raise DistillError(
                f"onnxruntime could not quantize {onnx_path} ({mode}: {first_line(err)}); leave the "
                "failing layers in float with keep_float=[node names] or use the other mode"
            ) from None
        inference_session(quantized)  # a file onnxruntime cannot run is never written
        out_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(quantized, out_path)
    return out_path


def supported_op_types(mode: str) -> list[str]:
    """ONNX operator types onnxruntime can quantize in ``mode`` (``static``: QDQ, ``dynamic``: integer ops)."""
    registry = require("onnxruntime.quantization.registry")
    table = registry.QDQRegistry if mode == "static" else registry.IntegerOpsRegistry
    return sorted(table)


def node_names(onnx_path: str | Path, op_type: str | None = None) -> list[str]:
    """Names of the graph's nodes in order (only ``op_type`` ones if given): what ``keep_float`` takes."""
    graph = require("onnx").load(str(onnx_path), load_external_data=False).graph
    return [n.name for n in graph.node if op_type is None or n.op_type == op_type]


COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def first_and_last_layers(onnx_path: str | Path) -> list[str]:
    """Names of the first and last compute nodes (Conv, ConvTranspose, Gemm, MatMul) in graph order.

    Keeping these two in float is the usual int8 recipe: the first sees raw pixels with 1-3 channels
    (coarse uint8 ranges, and onnxruntime's int8 convolutions are slow at so few channels), the last
    produces the logits. For the Fashion-MNIST student it halves int8 latency at batch 1 at no accuracy cost
    (``docs/export.md``).
    """
    names = [n for op in COMPUTE_OPS for n in node_names(onnx_path, op)]
    order = {name: i for i, name in enumerate(node_names(onnx_path))}
    names.sort(key=order.__getitem__)
    return list(dict.fromkeys(names[:1] + names[-1:]))


def _check_op_types(op_types: Sequence[str] | None, mode: str) -> None:
    if op_types is None:
        return
    supported = supported_op_types(mode)
    bad = [op for op in op_types if op not in supported]
    if bad:
        hint = did_you_mean(bad[0], supported)
        raise DistillError(
            f"onnxruntime cannot quantize operator type(s) {', '.join(map(repr, bad))} in {mode} mode."
            f"{hint} It can quantize: {', '.join(supported)}; leave the others in float"
        )


def _check_node_names(onnx_path: Path, keep_float: Sequence[str]) -> None:
    if not keep_float:
        return
    names = node_names(onnx_path)
    missing = [n for n in keep_float if n not in names]
    if missing:
        raise DistillError(
            f"keep_float names node {missing[0]!r}, which {onnx_path.name} does not have."
            f"{did_you_mean(missing[0], names)} Node names: {', '.join(names[:12])}"
            f"{' ...' if len(names) > 12 else ''}"
        )


def _prepare(quantization: Any, src: Path, dst: Path) -> None:
    """Shape inference and graph clean-up before quantization (onnxruntime's recommended pre-processing).

    Run inside ``dst``'s (temporary) folder: when onnxruntime's symbolic shape inference cannot infer
    every shape it saves ``sym_shape_infer_temp.onnx`` and its weights into the current directory before
    raising. Then it is retried without symbolic shapes, and as a last resort the file is quantized as
    exported.
    """
    src, dst = src.resolve(), dst.resolve()
    with _working_directory(dst.parent):
        for skip_symbolic in (False, True):
            try:
                quantization.quant_pre_process(
                    str(src), str(dst), skip_symbolic_shape=skip_symbolic
                )
                return
            except Exception:  # noqa: BLE001, S112 - optional step: try the next, simpler way
                continue
    dst.write_bytes(src.read_bytes())


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _input_name(path: Path) -> str:
    return require("onnx").load(str(path), load_external_data=False).graph.input[0].name


class _Reader:
    """onnxruntime's ``CalibrationDataReader`` protocol over an iterable of input batches."""

    def __init__(self, input_name: str, batches: Iterable[torch.Tensor]) -> None:
        self.input_name = input_name
        self.batches: Iterator[torch.Tensor] = iter(batches)
        self.seen = 0

    def get_next(self) -> dict[str, Any] | None:
        batch = next(self.batches, None)
        if batch is None:
            if self.seen == 0:
                raise DistillError("the calibration data is empty; give at least one input batch")
            return None
        if not isinstance(batch, torch.Tensor):
            raise DistillError(
                f"calibration batches must be input tensors (B, ...), got {type(batch).__name__}; "
                "pass the inputs only, e.g. (x for x, _ in loader)"
            )
        self.seen += 1
        return {self.input_name: batch.detach().to("cpu", torch.float32).contiguous().numpy()}
