"""Export students to ONNX, check them against PyTorch with onnxruntime, run them as ``nn.Module``s and time
them. Needs the ``export`` extra (``pip install 'distill[export]'``); onnx and onnxruntime are imported only
when a function here is called, so importing this package stays light.

A model's input is a tensor ``(B, ...)`` or a dict of named tensors (text: ``input_ids``,
``attention_mask`` ``(B, T)``), whatever ``task.split(batch).inputs`` gives; see :mod:`.exporter`.
"""

from distill.export.exporter import export_onnx
from distill.export.inputs import Inputs, first_output
from distill.export.latency import latency_key, measure_latency
from distill.export.run import EXPORT_FORMATS, INT8_MODES, default_int8_mode, export_run
from distill.export.runtime import (
    OnnxModule,
    ParityError,
    ParityReport,
    check_parity,
    merge_reports,
)

__all__ = [
    "export_onnx",
    "Inputs",
    "first_output",
    "check_parity",
    "merge_reports",
    "ParityReport",
    "ParityError",
    "OnnxModule",
    "measure_latency",
    "latency_key",
    "export_run",
    "EXPORT_FORMATS",
    "INT8_MODES",
    "default_int8_mode",
]
