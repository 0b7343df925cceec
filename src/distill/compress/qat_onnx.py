"""QAT step 3: the fake-quant model converted (:func:`to_reference`) and exported as an int8 QDQ ONNX
file checked against it (:func:`export_reference_onnx`), with its weights stored as int8."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.compress.qat_graph import _torchao, switchable
from distill.export._deps import require
from distill.export.exporter import export_onnx
from distill.export.runtime import ParityError, check_parity


def to_reference(qat_model: nn.Module) -> nn.Module:
    """The fake-quant model converted by ``convert_pt2e``: float ops between ``quantized_decomposed``
    quantize/dequantize pairs, BatchNorm folded and weights stored as int8; what :func:`export_qat_onnx`
    exports, in eval mode on the CPU (``qat_model`` is unchanged)."""
    quantize = _torchao("quantization.pt2e.quantize_pt2e")
    model = copy.deepcopy(qat_model).cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = quantize.convert_pt2e(model)
    return switchable(converted).eval()


def export_qat_onnx(
    qat_model: nn.Module, example: torch.Tensor, path: str | Path, check: bool = True
) -> Path:
    """Write the QAT model (from :func:`prepare_qat`) as an int8 QDQ ONNX file (dynamic batch) and return
    its path: :func:`to_reference`, then :func:`export_reference_onnx`."""
    return export_reference_onnx(to_reference(qat_model), example, path, check)


def export_reference_onnx(
    reference: nn.Module, example: torch.Tensor, path: str | Path, check: bool = True
) -> Path:
    """Write a converted QAT model (:func:`to_reference`) as an int8 QDQ ONNX file and return its path.

    With ``check``, onnxruntime's outputs on ``example`` ``(B, ...)`` must match ``reference``'s within
    10% of the largest logit, or the file is deleted and :class:`~distill.export.ParityError` is raised.
    They are not bit-equal: onnxruntime requantizes the int32 accumulators of its fused kernels, so an
    activation at a rounding boundary can land one step (1/255 of its range) away and that propagates
    (measured: 1-6% of the largest logit on small CNNs, top-1 unchanged).
    """
    path = export_onnx(reference, example, path, check=False)
    store_int8_weights(path)
    if check:
        with torch.no_grad():
            atol = 0.1 * float(reference(example.cpu()).abs().max())
        report = check_parity(reference, path, example.cpu(), rtol=0.0, atol=atol)
        if not report.ok:
            path.unlink(missing_ok=True)
            raise ParityError(report, path)
    return path


def store_int8_weights(path: str | Path) -> int:
    """Rewrite ``path`` so weights are stored as int8: each ``QuantizeLinear`` (and the ``Clip`` after it)
    of a constant float weight is computed once and replaced by its int8 initializer, which feeds the
    ``DequantizeLinear`` directly, as in onnxruntime's own QDQ files. Returns how many were folded.

    ``convert_pt2e`` already stores the quantized weights as int8, so on its graphs this folds nothing;
    it is kept for a graph whose float weights are quantized at run time (onnxruntime folds that at
    load time anyway, so outputs do not change, but the file shrinks to int8 size).
    """
    onnx = require("onnx")
    helper = onnx.numpy_helper
    model = onnx.load(str(path))
    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    dead, folded = set(), 0
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or not all(i in consts for i in node.input):
            continue
        w, scale, zero = (helper.to_array(consts[i]) for i in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if scale.ndim:
            shape[axis] = -1
        q = np.rint(w / scale.reshape(shape)) + zero.reshape(shape).astype(np.int64)
        last = node
        after = users.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "Clip":
            if not all(i in consts for i in after[0].input[1:] if i):
                continue
            low, high = (helper.to_array(consts[i]) for i in after[0].input[1:3])
            q, last = np.clip(q, low, high), after[0]
            dead.add(id(after[0]))
        info = np.iinfo(zero.dtype)
        q = np.clip(q, info.min, info.max).astype(zero.dtype)
        graph.initializer.append(helper.from_array(q, last.output[0]))
        dead.add(id(node))
        folded += 1
    _replace(graph.node, [n for n in graph.node if id(n) not in dead])
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    _replace(graph.initializer, [t for t in graph.initializer if t.name in used])
    produced = {o for n in graph.node for o in n.output}
    _replace(graph.value_info, [v for v in graph.value_info if v.name in produced])
    onnx.save(model, str(path))
    return folded


def _replace(field: Any, items: list[Any]) -> None:
    """Set a repeated protobuf field to ``items`` (copies: the old entries are cleared first)."""
    kept = [type(item)() for item in items]
    for new, old in zip(kept, items, strict=True):
        new.CopyFrom(old)
    del field[:]
    field.extend(kept)
