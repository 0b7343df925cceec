"""ONNX export of any student with a dynamic batch dimension, checked against PyTorch before it is kept.

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
from pathlib import Path

import torch
from torch import nn

from distill.errors import DistillError
from distill.export._deps import require

NATIVE_OPSET = (
    18  # what the dynamo exporter writes; other opsets go through onnx's version converter
)
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    opset: int | None = None,
    dynamic_batch: bool = True,
    check: bool = True,
) -> Path:
    """Write ``model`` as one self-contained ``.onnx`` file (weights inside) and return its path.

    ``example`` is a batch ``(B, ...)`` of real inputs; with ``dynamic_batch`` the file accepts any batch
    size (a batch of 1 works too). With ``check``, the file is run with
    onnxruntime on ``example`` and compared with ``model``; if they differ, the file is deleted and
    :class:`~distill.export.ParityError` is raised. The model is exported in ``eval()`` mode on CPU and
    left as it was.
    """
    require("onnx"), require("onnxscript")
    path = Path(path)
    if not isinstance(example, torch.Tensor) or example.dim() < 1:
        raise DistillError(
            f"example must be a batch of inputs (a tensor with a batch dimension), got {type(example).__name__}"
        )
    _check_opset(opset)
    device, was_training = _device_of(model), model.training
    model = model.cpu().eval()
    try:
        _write(model, example.cpu(), path, opset, dynamic_batch)
        if check:
            from distill.export.runtime import ParityError, check_parity

            report = check_parity(model, path, example.cpu())
            if not report.ok:
                path.unlink(missing_ok=True)
                raise ParityError(report, path)
    finally:
        model.to(device).train(was_training)
    return path


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


def _write(
    model: nn.Module, example: torch.Tensor, path: Path, opset: int | None, dynamic_batch: bool
) -> None:
    """Export to a temporary file next to ``path``, check the opset, then rename (never a half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    dynamic = {"x": {0: torch.export.Dim("batch")}} if dynamic_batch else None
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
                    _Positional(model),
                    (example,),
                    tmp,
                    dynamo=True,
                    external_data=False,
                    opset_version=opset,
                    dynamic_shapes=dynamic,
                    input_names=[INPUT_NAME],
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
    """Calls ``model(x)``; gives the exporter one positional input named ``x`` whatever ``forward`` calls it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, dict):  # Hugging Face style outputs: keep the logits, as the task does
            out = out["logits"]
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out


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
    kind, detail = type(cause).__name__, _summary(cause)
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


def _summary(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:200]


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
