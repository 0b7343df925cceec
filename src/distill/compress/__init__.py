"""Compression steps, each ``nn.Module -> nn.Module``: pruning (``prune``) and int8 quantization (``quantize``)."""
