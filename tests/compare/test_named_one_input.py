"""The latency harness on an ONNX model with ONE named input (a causal LM's ``input_ids``): the packed
``(B, 1, T)`` batch is unpacked to ``(B, T)``, as for text models with several inputs (it reached
onnxruntime as rank 3: 'Invalid rank for input: input_ids Got: 3 Expected: 2')."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime", reason="needs the export extra")

from distill.compare.named import packed  # noqa: E402
from distill.export import measure_latency  # noqa: E402
from distill.export.exporter import export_onnx  # noqa: E402
from distill.export.runtime import OnnxModule  # noqa: E402


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(11, 8), nn.Linear(8, 11)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids))


def test_a_single_named_input_is_unpacked_for_timing(tmp_path) -> None:
    torch.manual_seed(0)
    model = TinyLM().eval()
    ids = torch.randint(0, 11, (2, 6))
    path = export_onnx(model, {"input_ids": ids}, tmp_path / "lm.onnx")
    wrapped, example = packed(OnnxModule(path, 1), {"input_ids": ids[0]})
    assert example.shape == (1, 6)
    latency = measure_latency(
        wrapped, example, batch_sizes=(1, 3), threads=(1,), warmup=1, repeats=2
    )
    assert all(v > 0 for v in latency.values())
    with torch.no_grad():
        got = wrapped(example.unsqueeze(0).expand(3, 1, 6))
    assert torch.allclose(got, model(ids[0].expand(3, 6)), atol=1e-5)
