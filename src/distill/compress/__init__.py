"""Compression steps, each ``nn.Module -> nn.Module``: pruning (``prune``) and quantization-aware training
with KD from the float model (``qat``). Post-training int8 quantization works on ONNX files, so it is part
of the export (:mod:`distill.export.quantize`); QAT ends in an int8 ONNX file through the exporter."""
