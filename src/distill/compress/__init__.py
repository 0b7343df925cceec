"""Compression steps, each ``nn.Module -> nn.Module``: pruning (``prune``), post-training int8 quantization
of ONNX files (``quantize``) and quantization-aware training with KD from the float model (``qat``)."""
