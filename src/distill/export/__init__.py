"""Export students to ONNX, check them against PyTorch with onnxruntime, run them as ``nn.Module``s and time
them. Needs the ``export`` extra (``pip install 'distill[export]'``); onnx and onnxruntime are imported only
when a function here is called, so importing this package stays light.
"""

from distill.export.exporter import export_onnx
from distill.export.latency import latency_key, measure_latency
from distill.export.run import EXPORT_FORMATS, export_run
from distill.export.runtime import OnnxModule, ParityError, ParityReport, check_parity

__all__ = [
    "export_onnx",
    "check_parity",
    "ParityReport",
    "ParityError",
    "OnnxModule",
    "measure_latency",
    "latency_key",
    "export_run",
    "EXPORT_FORMATS",
]
