"""The latency harness: its key scheme for PyTorch models and ONNX files, percentiles against numpy,
thread settings restored, bad arguments refused. No timing thresholds: only structure and math."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.export import OnnxModule, latency_key, measure_latency
from distill.export.latency import percentile

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def matmul_onnx(tmp_path_factory) -> Path:
    """A hand-written ONNX file: flatten (B, 2, 3) and multiply by a (6, 4) weight; no exporter needed."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(24, dtype=np.float32).reshape(6, 4) / 24, "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path_factory.mktemp("lat") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def expected_keys(batch_sizes, threads) -> set[str]:
    return {
        latency_key(b, t, stat) for b in batch_sizes for t in threads for stat in ("median", "p90")
    }


def test_key_scheme():
    assert latency_key(1, 1) == "latency_ms_b1_t1"
    assert latency_key(256, None) == "latency_ms_b256_tall"
    assert latency_key(256, None, "p90") == "latency_p90_ms_b256_tall"


def test_torch_model_every_key_and_threads_restored():
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    before = torch.get_num_threads()
    result = measure_latency(
        model, torch.randn(2, 3), batch_sizes=(1, 5), threads=(1, None), warmup=1, repeats=5
    )
    assert torch.get_num_threads() == before
    assert set(result) == expected_keys((1, 5), (1, None))
    for b in (1, 5):
        for t in (1, None):
            assert 0 < result[latency_key(b, t)] <= result[latency_key(b, t, "p90")]


def test_threads_restored_when_the_model_fails():
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        measure_latency(Boom(), torch.randn(3), threads=(1,), warmup=1, repeats=1)
    assert torch.get_num_threads() == before


def test_onnx_module_gets_a_session_per_thread_setting(matmul_onnx, monkeypatch):
    module = OnnxModule(matmul_onnx)
    x = torch.randn(3, 2, 3)
    torch.testing.assert_close(module(x), x.flatten(1) @ (torch.arange(24.0).reshape(6, 4) / 24))
    made = []
    real = OnnxModule.with_threads
    monkeypatch.setattr(OnnxModule, "with_threads", lambda self, t: made.append(t) or real(self, t))
    result = measure_latency(
        module, torch.randn(2, 3), batch_sizes=(1, 7), threads=(1, 2), warmup=2, repeats=4
    )
    assert made == [1, 2]
    assert set(result) == expected_keys((1, 7), (1, 2))
    assert module.with_threads(1).session.get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize("q", [0, 10, 50, 90, 100])
def test_percentile_matches_numpy(q):
    values = list(np.random.default_rng(q).exponential(size=37))
    assert percentile(values, q) == pytest.approx(np.percentile(values, q))


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"batch_sizes": (0,)}, "batch_sizes must be positive"),
        ({"batch_sizes": ()}, "batch_sizes must be positive"),
        ({"threads": (0,)}, "threads must be positive ints or None"),
        ({"repeats": 0}, "need repeats >= 1"),
        ({"warmup": -1}, "warmup >= 0"),
    ],
)
def test_bad_arguments(kwargs, needle):
    with pytest.raises(DistillError, match=needle):
        measure_latency(nn.Identity(), torch.randn(3), **kwargs)


def test_bad_thread_count_for_a_session(matmul_onnx):
    with pytest.raises(DistillError, match="threads must be a positive int or None"):
        OnnxModule(matmul_onnx, threads=0)
