"""Run ONNX files with onnxruntime: :class:`OnnxModule` (an ``nn.Module``), the execution providers it
picks (:func:`choose_providers`) and the parity check. :class:`RuntimeModule` is what every runtime's
wrapper is (``distill.export.runtimes``: OpenVINO and the registry of runtimes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError, did_you_mean, first_line
from distill.export._deps import require
from distill.export.binding import BoundRunner
from distill.export.inputs import Inputs, batch_size, call_model, first_output, to_cpu

_TORCH_DTYPES = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(double)": torch.float64,
    "tensor(int64)": torch.int64,
    "tensor(int32)": torch.int32,
    "tensor(bool)": torch.bool,
    "tensor(uint8)": torch.uint8,
}  # onnxruntime's input type names -> what forward casts inputs to
DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)  # see session_options
CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
DEVICES = ("cpu", "cuda", "tensorrt", "auto")


def choose_providers(available: list[str], device: str = "cpu") -> list[str]:
    """onnxruntime's execution providers for ``device``, best first, from the ``available`` ones
    (``onnxruntime.get_available_providers()``): ``cpu`` the CPU alone; ``cuda`` CUDA then CPU (for the
    nodes CUDA lacks); ``tensorrt`` TensorRT, CUDA, CPU; ``auto`` whatever GPU providers are there, else
    the CPU. Asking for a GPU provider this onnxruntime does not have is a :class:`DistillError`."""
    if device not in DEVICES:
        raise DistillError(
            f"unknown onnxruntime device {device!r}.{did_you_mean(str(device), DEVICES)} "
            f"Use one of {', '.join(DEVICES)}"
        )
    wanted = {"cpu": [], "cuda": [CUDA], "tensorrt": [TENSORRT, CUDA], "auto": [TENSORRT, CUDA]}
    gpu = [p for p in wanted[device] if p in available]
    if device in ("cuda", "tensorrt") and wanted[device][0] not in available:
        raise DistillError(
            f"onnxruntime here has no {wanted[device][0]} (available: {', '.join(available)}); "
            "install onnxruntime-gpu on a machine with an NVIDIA GPU, or use device cpu"
        )
    return [*gpu, CPU]


def session_options(threads: int | None = None) -> Any:
    """Options tuned for low-latency inference: all graph optimisations but one (below), sequential
    execution, ``threads`` intra-op threads (``None``: onnxruntime's default, one per physical core).

    onnxruntime's ``QDQPropagationTransformer`` is disabled: it moves a QuantizeLinear up through the
    MaxPool that follows a float layer, so the pooling runs on uint8 in NCHW, a slow generic kernel; left
    in float, the pooling fuses into the float convolution's blocked layout. Pooling and quantizing commute
    (quantization is monotonic), so the outputs are bit-identical (timings: ``docs/export.md``). Files
    without Q/DQ nodes are unaffected.
    """
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry(
        "optimization.disable_specified_optimizers", ",".join(DISABLED_OPTIMIZERS)
    )
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
    # warnings about unused initializers etc. are not the user's problem
    options.log_severity_level = 3
    return options


def inference_session(
    path: str | Path, threads: int | None = None, providers: list[str] | None = None
) -> Any:
    """An onnxruntime session for ``path`` on ``providers`` (default: the CPU alone); a file it cannot
    load is a :class:`DistillError`."""
    ort = require("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"ONNX file {path} not found; export one first (distill export RUN_DIR)")
    try:
        return ort.InferenceSession(
            str(path), session_options(threads), providers=providers or [CPU]
        )
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = first_line(err, limit=240)
        hint = (
            "export it again with an opset this onnxruntime supports"
            if "opset" in first.lower()
            else "export it again or check the file"
        )
        raise DistillError(
            f"onnxruntime {ort.__version__} cannot load {path} ({first}); {hint}"
        ) from None


class RuntimeModule(nn.Module):
    """An exported file run by some runtime, behind the ``nn.Module`` interface: ``forward`` takes what the
    PyTorch model took and returns its first output as a CPU tensor. ``path`` is the file, ``threads`` the
    runtime's intra-op threads (``None``: its default, all cores), ``runtime`` the runtime's name in
    ``distill.export.runtimes.RUNTIMES``. The latency harness times one instance per thread setting
    (:meth:`with_threads`)."""

    runtime = "?"
    path: Path
    threads: int | None

    @property
    def size_bytes(self) -> int:
        """Bytes on disk (the whole model: the file is self-contained)."""
        return self.path.stat().st_size

    def with_threads(self, threads: int | None) -> RuntimeModule:
        """The same file in a new session with ``threads`` intra-op threads."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, threads={self.threads}"


class OnnxModule(RuntimeModule):
    """An ONNX file behind the ``nn.Module`` interface, so task evaluation and report measurement run on it
    unchanged: ``forward(x)`` for a one-input file (``x`` ``(B, ...)``), ``forward(**inputs)`` or
    ``forward(inputs_dict)`` for named inputs (text: ``input_ids=``, ``attention_mask=`` ``(B, T)``).
    Returns the file's first output as a CPU tensor, e.g. float32 logits ``(B, num_classes)``.

    Inputs are cast to the dtypes the file declares (float32 images, int64 token ids). There are no
    parameters; ``size_bytes`` is the file's size on disk. ``threads`` sets onnxruntime's intra-op threads
    (``None``: all physical cores); ``providers`` its execution providers (default: the CPU alone; see
    :func:`choose_providers`). Inputs and outputs stay in CPU memory (a GPU provider copies them).
    """

    runtime = "onnxruntime"

    def __init__(
        self, path: str | Path, threads: int | None = None, providers: list[str] | None = None
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.threads = threads
        self.providers = list(providers or [CPU])
        self.session = inference_session(self.path, threads, self.providers)
        declared = self.session.get_inputs()
        self.input_names = [i.name for i in declared]
        self.input_name = self.input_names[0]
        self.input_dtypes = {i.name: _TORCH_DTYPES.get(i.type, torch.float32) for i in declared}
        self.output_names = [self.session.get_outputs()[0].name]
        self.runner = BoundRunner(self.session, self.input_dtypes, self.output_names[0])

    def with_threads(self, threads: int | None) -> OnnxModule:
        """The same file in a new session with ``threads`` intra-op threads."""
        return type(self)(self.path, threads, self.providers)

    def forward(self, x: Any = None, **inputs: torch.Tensor) -> torch.Tensor:
        if not inputs and type(x) is torch.Tensor and self.runner.single_input:
            return self.runner.one(x)  # the common case, kept short: images, batch 1
        if isinstance(x, Mapping):
            inputs, x = {**x, **inputs}, None
        if x is not None:
            if inputs or len(self.input_names) != 1:
                raise DistillError(
                    f"{self.path.name} takes the named inputs {self.input_names}; call it with "
                    "keyword arguments (model(**inputs)), not one positional tensor"
                )
            inputs = {self.input_name: x}
        if set(inputs) != set(self.input_names):
            raise DistillError(
                f"{self.path.name} takes the inputs {self.input_names}, got {sorted(inputs)}; pass the "
                "inputs the model was exported with"
            )
        return self.runner(inputs)


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
    inputs: Inputs,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    runner: nn.Module | None = None,
) -> ParityReport:
    """Run ``model`` (eval mode, CPU) and the ONNX file on one batch ``inputs`` (a tensor ``(N, ...)`` or a
    mapping of named tensors, as :func:`~distill.export.export_onnx` takes) and compare the first outputs.
    ``runner``: the file as another runtime runs it (a :class:`RuntimeModule`; default onnxruntime's CPU)."""
    was_training = model.training
    model.eval()
    try:
        expected = first_output(call_model(model, to_cpu(inputs))).float()
    finally:
        model.train(was_training)
    got = first_output(call_model(runner or OnnxModule(onnx_path), inputs)).float()
    if got.shape != expected.shape:
        raise DistillError(
            f"ONNX model {onnx_path} returns shape {tuple(got.shape)} where PyTorch returns "
            f"{tuple(expected.shape)}; export it again from this model"
        )
    diff = (got - expected).abs()
    ok = bool(torch.isfinite(got).all()) and bool((diff <= atol + rtol * expected.abs()).all())
    return ParityReport(
        ok, float(diff.max()) if diff.numel() else 0.0, rtol, atol, batch_size(inputs)
    )


def merge_reports(reports: list[ParityReport]) -> ParityReport:
    """One report for several batches (e.g. text batches padded to different lengths): ``ok`` if all are,
    the largest difference, the total count."""
    assert reports, "merge_reports needs at least one report"
    return ParityReport(
        all(r.ok for r in reports),
        max(r.max_abs_diff for r in reports),
        reports[0].rtol,
        reports[0].atol,
        sum(r.n for r in reports),
    )
