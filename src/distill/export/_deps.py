"""The optional ``export`` extra (onnx, onnxruntime, onnxscript), imported only when used."""

from __future__ import annotations

import importlib
from types import ModuleType

from distill.errors import DistillError


def require(module: str) -> ModuleType:
    """Import ``module`` (``onnx``, ``onnxruntime``, ...) or say how to install the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DistillError(
            f"{module} is not installed ({err}); ONNX export, parity checks, int8 quantization and "
            "the latency harness need it: pip install 'distill[export]'"
        ) from None
