"""The optional extras of export (``export``: onnx, onnxruntime, onnxscript, onnxconverter-common;
``openvino``), imported only when used."""

from __future__ import annotations

import importlib
from types import ModuleType

from distill.errors import DistillError

WHAT = {
    "export": "ONNX export, parity checks, int8 and float16 conversion and the latency harness need it",
    "openvino": "the openvino runtime needs it",
    "executorch": "ExecuTorch export and its runtime need it",
    "coreml": "Core ML export and its file check need it",
}


def require(module: str, extra: str = "export") -> ModuleType:
    """Import ``module`` (``onnx``, ``onnxruntime``, ``openvino``...) or say how to install ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DistillError(
            f"{module} is not installed ({err}); {WHAT.get(extra, 'it is needed here')}: "
            f"pip install 'distill[{extra}]'"
        ) from None
