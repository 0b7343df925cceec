"""ONNX export of any student with a dynamic batch dimension, checked against PyTorch before it is kept.

A model's input is whatever ``task.split(batch).inputs`` is: one tensor ``(B, ...)`` (images: the ONNX
input ``input``, batch axis dynamic) or a mapping of tensors (text: ``input_ids``, ``attention_mask``,
``token_type_ids`` ``(B, T)``; one ONNX input per key, in the mapping's order, batch and sequence axes
dynamic). The output is the model's first tensor: itself, ``logits`` of a mapping (Hugging Face outputs),
or the first element of a tuple/list (recursively, e.g. a detector's ``[(B, 4 + C, A), ...]``).

The exporter is ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript): it refuses models whose
control flow depends on tensor values instead of tracing one branch, and it is the path PyTorch maintains.
Why not the TorchScript exporter (``dynamo=False``) is in ``docs/export.md``.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError, first_line
from distill.export._deps import require
from distill.export.inputs import Inputs, first_output, to_cpu
from distill.export.runtime import ParityError, check_parity
from distill.models.yolo import export_view, is_yolo

# what the dynamo exporter writes; other opsets go through onnx's version converter
NATIVE_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def _check_example(example: Any) -> None:
    tensors = list(example.values()) if isinstance(example, Mapping) else [example]
    ok = bool(tensors) and all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in tensors)
    if isinstance(example, Mapping):
        ok = ok and all(isinstance(k, str) for k in example)
        ok = ok and len({t.shape[0] for t in tensors if isinstance(t, torch.Tensor)}) == 1
    if not ok:
        raise DistillError(
            "example must be a batch of inputs (a tensor with a batch dimension, or a dict of named "
            f"tensors with the same batch size), got {type(example).__name__}; pass task.split(batch).inputs"
        )


def export_onnx(
    model: nn.Module,
    example: Inputs,
    path: str | Path,
    opset: int | None = None,
    dynamic_batch: bool = True,
    check: bool = True,
) -> Path:
    """Write ``model`` as one self-contained ``.onnx`` file (weights inside) and return its path.

    ``example`` is a batch of real inputs: a tensor ``(B, ...)`` or a mapping of named tensors ``(B, T, ...)``
    (see the module docstring). With ``dynamic_batch`` the file accepts any batch size (a batch of 1 works
    too) and, for a mapping, any sequence length ``T``; trace with ``B, T >= 2``, or the exporter may fix
    them. With ``check``, the file is run with
    onnxruntime on ``example`` and compared with ``model``; if they differ, the file is deleted and
    :class:`~distill.export.ParityError` is raised. The model is exported in ``eval()`` mode on CPU and
    left as it was.
    """
    require("onnx"), require("onnxscript")
    path = Path(path)
    _check_example(example)
    _check_opset(opset)
    device, was_training = _device_of(model), model.training
    model = model.cpu().eval()
    try:
        _write(_export_view(model), to_cpu(example), path, opset, dynamic_batch)
        if check:
            report = check_parity(model, path, to_cpu(example))
            if not report.ok:
                path.unlink(missing_ok=True)
                raise ParityError(report, path)
    finally:
        model.to(device).train(was_training)
    return path


def _export_view(model: nn.Module) -> nn.Module:
    """What is traced: the model itself, or for an Ultralytics YOLO model a copy that returns only its
    decoded predictions (B, 4 + classes, A), as Ultralytics' own ONNX export does."""
    return export_view(model) if is_yolo(model) else model


def _device_of(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _check_opset(opset: int | None) -> None:
    if opset is None:
        return
    newest = require("onnx").defs.onnx_opset_version()
    if not isinstance(opset, int) or isinstance(opset, bool) or not NATIVE_OPSET <= opset <= newest:
        raise DistillError(
            f"opset {opset!r} is not available: the exporter writes opsets {NATIVE_OPSET} to {newest} "
            f"(onnx {require('onnx').__version__}); leave opset unset for {NATIVE_OPSET} or pick one in that range"
        )


def _dynamic_shapes(example: Inputs, dynamic_batch: bool) -> Any:
    """``dynamic_shapes`` for :class:`_Positional`'s ``*inputs``: batch (and, for named inputs of rank >= 2,
    sequence) axes shared by every input, so the exporter knows they are equal."""
    if not dynamic_batch:
        return None
    batch = torch.export.Dim("batch")
    if not isinstance(example, Mapping):
        return (({0: batch},),)
    sequence = torch.export.Dim("sequence")
    return (
        tuple({0: batch, 1: sequence} if t.dim() >= 2 else {0: batch} for t in example.values()),
    )


def _write(
    model: nn.Module, example: Inputs, path: Path, opset: int | None, dynamic_batch: bool
) -> None:
    """Export to a temporary file next to ``path``, check the opset, then rename (never a half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    names = list(example) if isinstance(example, Mapping) else None
    args = tuple(example.values()) if isinstance(example, Mapping) else (example,)
    captured = io.StringIO()  # the exporter narrates each step and dumps graphs on failure
    try:
        try:
            with (
                contextlib.redirect_stdout(captured),
                contextlib.redirect_stderr(captured),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _Positional(model, names),
                    args,
                    tmp,
                    dynamo=True,
                    external_data=False,
                    opset_version=opset,
                    dynamic_shapes=_dynamic_shapes(example, dynamic_batch),
                    input_names=names or [INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    verbose=False,
                )
        except Exception as err:  # noqa: BLE001 - every exporter failure becomes one clear line
            raise export_error(model, err) from None
        written = _strip(tmp)
        if opset is not None and written != opset:
            raise DistillError(
                f"the exporter could not convert the model to opset {opset} (it wrote {written}); "
                f"leave opset unset or use {written}"
            )
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Positional(nn.Module):
    """Gives the exporter positional inputs whatever ``forward`` calls them: ``model(x)``, or with ``names``
    ``model(**dict(zip(names, inputs)))``; returns :func:`first_output`."""

    def __init__(self, model: nn.Module, names: list[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.names is None:
            return first_output(self.model(*inputs))
        return first_output(self.model(**dict(zip(self.names, inputs, strict=True))))


def _strip(path: str | Path) -> int:
    """Drop the exporter's per-node debug metadata (source stack traces: a third of a small model's file);
    return the file's default-domain opset."""
    onnx = require("onnx")
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path))
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export_error(model: nn.Module, err: BaseException) -> DistillError:
    """A one-line :class:`DistillError` for an exporter failure, naming the innermost module involved."""
    where = _failing_module(model, err)
    cause = _root_cause(err)
    kind, detail = type(cause).__name__, first_line(cause)
    at = f"module {where!r}" if where else "the model"
    if "DataDependent" in kind or "data-dependent" in detail:
        return DistillError(
            f"cannot export {at} to ONNX: its forward branches on tensor values ({detail}); "
            "make the control flow independent of the data (torch.where, torch.cond) or export a "
            "model without that branch"
        )
    if (
        "Unsupported" in kind
        or "unsupported" in detail.lower()
        or "not supported" in detail.lower()
    ):
        return DistillError(
            f"cannot export {at} to ONNX: an operator has no ONNX translation ({detail}); replace "
            "that layer with standard ones or pick another opset"
        )
    return DistillError(
        f"cannot export {at} to ONNX ({kind}: {detail}); check that the model runs on the example "
        "batch in eval mode and uses standard layers"
    )


def _root_cause(err: BaseException) -> BaseException:
    seen = {id(err)}
    while (nxt := err.__cause__ or err.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        err = nxt
    return err


def _failing_module(model: nn.Module, err: BaseException) -> str | None:
    """The name of the innermost submodule of ``model`` whose ``forward`` is in the error's traceback."""
    names = {id(module): name for name, module in model.named_modules()}
    found = None
    chain, seen = err, set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        tb = chain.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if id(owner) in names and tb.tb_frame.f_code.co_name == "forward":
                found = names[id(owner)]
            tb = tb.tb_next
        chain = chain.__cause__ or chain.__context__
    return None if found is None else (found or type(model).__name__)
