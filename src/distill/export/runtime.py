"""Run ONNX files with onnxruntime: :class:`OnnxModule` (an ``nn.Module``) and the parity check."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.errors import DistillError
from distill.export._deps import require


def session_options(threads: int | None = None) -> Any:
    """Options tuned for low-latency inference: all graph optimisations, sequential execution,
    ``threads`` intra-op threads (``None``: onnxruntime's default, one per physical core)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise DistillError(
                f"threads must be a positive int or None (all cores), got {threads!r}"
            )
        options.intra_op_num_threads = threads
        if threads == 1:  # no pool to keep spinning: a spinning pool steals the core at batch 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = (
        3  # warnings about unused initializers etc. are not the user's problem
    )
    return options


def inference_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for ``path``; a file it cannot load is a :class:`DistillError`."""
    ort = require("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"ONNX file {path} not found; export one first (distill export RUN_DIR)")
    try:
        return ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:240]
        hint = (
            "export it again with an opset this onnxruntime supports"
            if "opset" in first.lower()
            else "export it again or check the file"
        )
        raise DistillError(
            f"onnxruntime {ort.__version__} cannot load {path} ({first}); {hint}"
        ) from None


class OnnxModule(nn.Module):
    """An ONNX file behind the ``nn.Module`` interface: ``forward(x (B, ...)) -> (B, num_classes)`` float32
    on CPU, so task evaluation and report measurement run on it unchanged.

    There are no parameters; ``size_bytes`` is the file's size on disk. ``threads`` sets onnxruntime's
    intra-op threads (``None``: all physical cores).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.threads = threads
        self.session = inference_session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [self.session.get_outputs()[0].name]

    @property
    def size_bytes(self) -> int:
        """Bytes on disk (the whole model: the file is self-contained)."""
        return self.path.stat().st_size

    def with_threads(self, threads: int | None) -> OnnxModule:
        """The same file in a new session with ``threads`` intra-op threads."""
        return OnnxModule(self.path, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            x = x.detach()
        if x.dtype != torch.float32 or x.device.type != "cpu":
            x = x.to("cpu", torch.float32)
        array = np.ascontiguousarray(x.numpy())  # no copy when already contiguous (the usual case)
        return torch.from_numpy(self.session.run(self.output_names, {self.input_name: array})[0])

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, threads={self.threads}"


@dataclass
class ParityReport:
    """ONNX vs PyTorch on the same ``n`` inputs: ``ok`` when every output element satisfies
    ``|onnx - torch| <= atol + rtol * |torch|``; ``max_abs_diff`` is the largest ``|onnx - torch|``."""

    ok: bool
    max_abs_diff: float
    rtol: float
    atol: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ParityError(DistillError):
    """An exported model that does not match PyTorch; the file was not kept."""

    def __init__(self, report: ParityReport, path: str | Path) -> None:
        self.report = report
        super().__init__(
            f"ONNX model {path} failed the parity check against PyTorch: max abs difference "
            f"{report.max_abs_diff:.3g} over {report.n} inputs exceeds atol {report.atol:g} + rtol "
            f"{report.rtol:g} x |output|; the file was not kept. Check for layers that behave "
            "differently in eval mode or export with another opset"
        )


@torch.no_grad()
def check_parity(
    model: nn.Module,
    onnx_path: str | Path,
    inputs: torch.Tensor,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> ParityReport:
    """Run ``model`` (eval mode, CPU) and the ONNX file on ``inputs`` ``(N, ...)`` and compare the outputs."""
    was_training = model.training
    model.eval()
    try:
        expected = _as_logits(model(inputs.cpu())).float()
    finally:
        model.train(was_training)
    got = OnnxModule(onnx_path)(inputs)
    if got.shape != expected.shape:
        raise DistillError(
            f"ONNX model {onnx_path} returns shape {tuple(got.shape)} where PyTorch returns "
            f"{tuple(expected.shape)}; export it again from this model"
        )
    diff = (got - expected).abs()
    ok = bool(torch.isfinite(got).all()) and bool((diff <= atol + rtol * expected.abs()).all())
    return ParityReport(ok, float(diff.max()) if diff.numel() else 0.0, rtol, atol, len(inputs))


def _as_logits(out: Any) -> torch.Tensor:
    if isinstance(out, dict):
        return out["logits"]
    if isinstance(out, (tuple, list)):
        return out[0]
    return out
