"""The runtimes an exported file runs on, each behind :class:`~distill.export.runtime.RuntimeModule`, so
parity, task evaluation and the latency harness treat them alike, and the float16 conversion.

Each runtime is an optional extra, imported only when a file is loaded:

* ``onnxruntime`` (``distill[export]``): the CPU provider. Runs float32, float16 and int8 (QDQ or dynamic)
  ONNX files.
* ``onnxruntime-cuda``, ``onnxruntime-tensorrt`` (``onnxruntime-gpu``): the GPU providers, CPU after them
  for the nodes they lack (:func:`~distill.export.runtime.choose_providers`).
* ``openvino`` (``distill[openvino]``): Intel's runtime on the CPU; reads the same ONNX files (int8 QDQ ones
  become int8 kernels) and runs at float32 inference precision, so parity is the file's, not a bf16 cast's.

* ``executorch`` (``distill[executorch]``): PyTorch's on-device runtime; its own ``.pte`` files
  (:func:`export_executorch`: ``torch.export``, lowered to XNNPACK, one fixed batch size), float32.

Core ML files (:mod:`distill.export.coreml`) run only on macOS, so they are not among them; LiteRT
(TFLite) is not either. ``docs/export.md`` says why.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill.errors import DistillError, first_line
from distill.export._deps import require
from distill.export.runtime import OnnxModule, RuntimeModule, choose_providers
from distill.registry import Registry


@dataclass(frozen=True)
class Runtime:
    """A runtime: its name, the extra that installs it, and how it loads a file into a module."""

    name: str
    extra: str
    load: Callable[[Path, int | None], RuntimeModule]
    about: str


RUNTIMES: Registry[Runtime] = Registry("runtime")
# parity of a file against PyTorch, by precision: |runtime - torch| <= atol + rtol * |torch|
TOLERANCES = {"float32": (1e-3, 1e-4), "float16": (2e-2, 2e-2)}


def _onnxruntime(device: str) -> Callable[[Path, int | None], RuntimeModule]:
    def load(path: Path, threads: int | None) -> RuntimeModule:
        providers = choose_providers(require("onnxruntime").get_available_providers(), device)
        return OnnxModule(path, threads, providers)

    return load


_CORE: list[Any] = []  # one openvino.Core per process (it is costly to make)


class OpenVinoModule(RuntimeModule):
    """An ONNX file compiled by OpenVINO for ``device`` (``CPU``), latency hint, float32 inference
    precision, ``threads`` inference threads (``None``: OpenVINO's default, all cores). Inputs are cast to
    the dtypes the file declares and shared with OpenVINO without a copy; the output is copied out."""

    runtime = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None, device: str = "CPU") -> None:
        super().__init__()
        ov = require("openvino", extra="openvino")
        self.path, self.threads, self.device = Path(path), threads, device
        if not self.path.is_file():
            raise DistillError(
                f"file {self.path} not found; export one first (distill export RUN_DIR)"
            )
        if not _CORE:
            _CORE.append(ov.Core())
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = _CORE[0].compile_model(str(self.path), device, config)
        except Exception as err:  # noqa: BLE001 - openvino raises RuntimeError with long messages
            raise DistillError(
                f"openvino {ov.__version__} cannot compile {self.path} ({first_line(err, 240)}); "
                "check the file, or run it with onnxruntime"
            ) from None
        self.request = self.compiled.create_infer_request()
        self.input_names = [port.any_name for port in self.compiled.inputs]
        self.input_dtypes = {
            name: _OV_DTYPES.get(port.element_type.get_type_name(), torch.float32)
            for name, port in zip(self.input_names, self.compiled.inputs, strict=True)
        }
        self._tensor = ov.Tensor

    def with_threads(self, threads: int | None) -> OpenVinoModule:
        return type(self)(self.path, threads, self.device)

    def forward(self, x: Any = None, **inputs: torch.Tensor) -> torch.Tensor:
        if isinstance(x, Mapping):
            inputs, x = {**x, **inputs}, None
        if x is not None:
            inputs = {self.input_names[0]: x, **inputs}
        if set(inputs) != set(self.input_names):
            raise DistillError(
                f"{self.path.name} takes the inputs {self.input_names}, got {sorted(inputs)}; pass the "
                "inputs the model was exported with"
            )
        for i, name in enumerate(self.input_names):
            value = inputs[name].detach().to("cpu", self.input_dtypes[name]).contiguous()
            self.request.set_input_tensor(i, self._tensor(value.numpy(), shared_memory=True))
        self.request.infer()
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 pointed at the null device: ExecuTorch's C++ loader logs each failure there
    (``[program.cpp:168] Program identifier ...``) before raising; the raised error says it in one line."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class ExecuTorchModule(RuntimeModule):
    """A ``.pte`` file run by ExecuTorch's Python runtime (XNNPACK kernels). ExecuTorch's thread pool is
    one per process, sized when it starts; resizing it after a program ran aborted the process here
    (``_unsafe_reset_threadpool``), so ``threads`` must be ``None`` or the pool's size."""

    runtime = "executorch"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        require("executorch.runtime", extra="executorch")
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        self.path, self.threads = Path(path), threads
        if not self.path.is_file():
            raise DistillError(f"file {self.path} not found; export one first")
        try:
            with _native_stderr_silenced():
                self.method = Runtime.get().load_program(self.path).load_method("forward")
        except Exception as err:  # noqa: BLE001 - ExecuTorch raises RuntimeError with codes
            raise DistillError(
                f"executorch cannot load {self.path} ({first_line(err, 240)}); export it again "
                "(distill.export.runtimes.export_executorch)"
            ) from None
        pool = portable_lib._threadpool_get_thread_count()
        if threads is not None and threads != pool:
            raise DistillError(
                f"ExecuTorch's thread pool here has {pool} threads, one pool per process; time it "
                f"with all threads (threads None, --threads 0) or {pool}, not {threads}"
            )

    def with_threads(self, threads: int | None) -> ExecuTorchModule:
        return type(self)(self.path, threads)

    def forward(self, x: Any = None, **inputs: torch.Tensor) -> torch.Tensor:
        if x is None or inputs or isinstance(x, Mapping):
            raise DistillError(
                f"{self.path.name} takes one input tensor; ExecuTorch files here are exported from "
                "one-input models"
            )
        return self.method.execute([x.detach().to("cpu", torch.float32).contiguous()])[0]


def export_executorch(
    model: torch.nn.Module, example: torch.Tensor, path: str | Path, batch: int = 1
) -> Path:
    """``model`` as an ExecuTorch program (``.pte``) for inputs of ``batch`` samples shaped like
    ``example``'s: ``torch.export``, lowered to the XNNPACK backend. The batch is fixed: with a dynamic
    batch dimension, ExecuTorch 1.5 planned memory for at most 15 samples whatever the bound given, and
    calls with more failed (``docs/export.md``)."""
    require("executorch.exir", extra="executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    example = example[:1].expand(batch, *example.shape[1:]).contiguous()
    try:
        program = torch.export.export(model.eval(), (example,))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        buffer = lowered.to_executorch().buffer
    except Exception as err:  # noqa: BLE001 - torch.export and exir raise many types
        raise DistillError(
            f"could not export {type(model).__name__} to ExecuTorch ({first_line(err, 240)}); "
            "use the ONNX runtimes for it"
        ) from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer)
    return path


_OV_DTYPES = {"f32": torch.float32, "f16": torch.float16, "i64": torch.int64, "i32": torch.int32}

RUNTIMES.add(
    "onnxruntime",
    Runtime("onnxruntime", "export", _onnxruntime("cpu"), "onnxruntime, CPU provider"),
)
RUNTIMES.add(
    "onnxruntime-cuda",
    Runtime("onnxruntime-cuda", "export", _onnxruntime("cuda"), "onnxruntime-gpu, CUDA provider"),
)
RUNTIMES.add(
    "onnxruntime-tensorrt",
    Runtime(
        "onnxruntime-tensorrt", "export", _onnxruntime("tensorrt"), "onnxruntime-gpu, TensorRT"
    ),
)
RUNTIMES.add(
    "executorch",
    Runtime("executorch", "executorch", lambda p, t: ExecuTorchModule(p, t), "ExecuTorch, XNNPACK"),
)
RUNTIMES.add(
    "openvino",
    Runtime("openvino", "openvino", lambda p, t: OpenVinoModule(p, t), "OpenVINO, CPU device"),
)


def load(runtime: str, path: str | Path, threads: int | None = None) -> RuntimeModule:
    """``path`` loaded by ``runtime`` (a name in :data:`RUNTIMES`), ready to call."""
    return RUNTIMES.get(runtime).load(Path(path), threads)


def convert_float16(onnx_path: str | Path, out_path: str | Path) -> Path:
    """A float16 copy of a float32 ONNX file (weights and activations; inputs and outputs stay float32,
    so callers need no change), written to ``out_path`` (returned). onnxconverter-common's converter,
    which keeps in float32 the operators that have no float16 version."""
    onnx = require("onnx")
    float16 = require("onnxconverter_common.float16")
    model = onnx.load(str(onnx_path))
    try:
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as err:  # noqa: BLE001 - the converter raises plain exceptions
        raise DistillError(
            f"could not convert {onnx_path} to float16 ({first_line(err)}); keep the float32 file"
        ) from None
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(out_path))
    return out_path


INT8_OPS = {
    "QuantizeLinear",
    "DynamicQuantizeLinear",
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
}


def file_precision(onnx_path: str | Path) -> str:
    """``int8`` (quantize nodes or integer kernels), ``float16`` (float16 weights) or ``float32`` (also
    every ``.pte`` file: distill writes float32 ExecuTorch programs)."""
    if Path(onnx_path).suffix == ".pte":
        return "float32"
    onnx = require("onnx")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    if any(node.op_type in INT8_OPS for node in graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer):
        return "float16"
    return "float32"
