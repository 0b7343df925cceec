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


# OnnxModule calls the session through buffers bound once per input shape (BoundRunner): the results must
# be exactly those of a plain onnxruntime session, whatever the call pattern.


def plain_session(path: Path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_bound_calls_match_a_plain_session_and_return_new_tensors(matmul_onnx):
    module, plain = OnnxModule(matmul_onnx, threads=1), plain_session(matmul_onnx)
    outputs, expected = [], []
    for batch in (1, 1, 4, 1, 4, 9, 9, 2, 3, 1):  # new shapes, repeats, more shapes than are kept
        x = torch.randn(batch, 2, 3)
        outputs.append(module(x))
        expected.append(torch.from_numpy(plain.run(None, {"x": x.numpy()})[0]))
    for got, want in zip(outputs, expected, strict=True):  # earlier results were not overwritten
        assert torch.equal(got, want)
    assert len(module.runner.bound) == module.runner.max_shapes


def test_bound_calls_cast_and_detach_inputs(matmul_onnx):
    module, plain = OnnxModule(matmul_onnx), plain_session(matmul_onnx)
    x = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    want = plain.run(None, {"x": x.detach().float().numpy()})[0]
    for _ in range(3):
        got = module(x)
        assert got.dtype == torch.float32 and not got.requires_grad
        assert torch.equal(got, torch.from_numpy(want))
    transposed = torch.randn(2, 3, 2).transpose(1, 2)  # not contiguous
    want = plain.run(None, {"x": transposed.contiguous().numpy()})[0]
    assert torch.equal(module(transposed), torch.from_numpy(want))


def test_bound_input_is_read_where_it_lies_and_only_for_its_own_call(matmul_onnx):
    """A contiguous float32 input is bound where it lies (no copy): a run must see the values of its
    own call's tensor, whether the caller changed it in place, passed another tensor, or a tensor that
    needs a cast copy came in between; the caller's tensor is never written."""
    module, plain = OnnxModule(matmul_onnx, threads=1), plain_session(matmul_onnx)
    x, y = torch.randn(2, 2, 3), torch.randn(2, 2, 3)
    module(x)  # binds the shape
    module(x)
    entry = module.runner.bound[(x.shape,)]
    assert entry.pointers["x"] == x.data_ptr()  # bound to the caller's tensor, not a copy
    x_before = x.clone()
    calls = [x, y, x.double(), x, torch.randn(2, 3, 2).transpose(1, 2), y]
    for step, inp in enumerate(calls):
        if step == 3:
            x.mul_(-2.0)  # changed in place after a run that read it
            x_before = x.clone()
        want = torch.from_numpy(plain.run(None, {"x": inp.float().contiguous().numpy()})[0])
        assert torch.equal(module(inp), want), step
    assert torch.equal(x, x_before)
    del x, y, calls  # a new tensor at a freed address is still read afresh
    for _ in range(3):
        z = torch.randn(2, 2, 3)
        want = torch.from_numpy(plain.run(None, {"x": z.numpy()})[0])
        assert torch.equal(module(z), want)


def test_outputs_come_from_a_pool_but_are_separate_tensors(matmul_onnx, tmp_path, monkeypatch):
    """Bound outputs are handed out from a pool made ahead: each call gets a tensor no other call got,
    and each tensor owns only its own bytes (saving one does not save the pool)."""
    from distill.export import binding

    monkeypatch.setattr(binding, "POOL_SIZE", 3)  # refill several times below
    module, plain = OnnxModule(matmul_onnx, threads=1), plain_session(matmul_onnx)
    xs = [torch.randn(1, 2, 3) for _ in range(8)]
    outs = [module(x) for x in xs]
    for x, out in zip(xs, outs, strict=True):
        assert torch.equal(out, torch.from_numpy(plain.run(None, {"x": x.numpy()})[0]))
        assert out.shape == (1, 4) and out.dtype == torch.float32 and out.is_contiguous()
    assert len({o.data_ptr() for o in outs}) == len(outs)
    assert outs[-1].untyped_storage().nbytes() == 4 * 4
    torch.save(outs[-1], tmp_path / "one.pt")
    assert torch.equal(torch.load(tmp_path / "one.pt"), outs[-1])


def test_public_onnxruntime_calls_give_the_same_results(matmul_onnx):
    """Without onnxruntime's pybind objects (another layout) the runner uses the public methods."""
    module, plain = OnnxModule(matmul_onnx, threads=1), plain_session(matmul_onnx)
    module.runner.pybind = False
    for batch in (2, 2, 2, 3, 2):
        x = torch.randn(batch, 2, 3)
        assert torch.equal(module(x), torch.from_numpy(plain.run(None, {"x": x.numpy()})[0]))
        assert torch.equal(module(x.double()), module(x))
    assert module.runner.bound and all(e.c is None for e in module.runner.bound.values())


def test_busy_buffers_and_big_inputs_run_plainly(matmul_onnx):
    module = OnnxModule(matmul_onnx)
    x = torch.randn(2, 2, 3)
    first = module(x)
    with module.runner.lock:  # another thread holds the bound buffers
        assert torch.equal(module(x), first)
    module.runner.max_bytes = 64
    module(torch.randn(5, 2, 3))  # 120 bytes of input: not worth binding
    assert [key[0][0] for key in module.runner.bound] == [2]


def test_output_shape_that_depends_on_values_falls_back(tmp_path):
    """NonZero's output length depends on the values: a bound output of the wrong size must not be used."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"]),
        helper.make_node("Cast", ["nz"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "nonzero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "n"])],
    )
    path = tmp_path / "nonzero.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    module = OnnxModule(path)
    for x in (
        [[1.0, 0, 0, 2]],
        [[1.0, 0, 0, 2]],
        [[0.0, 3, 0, 0]],
        [[5.0, 6, 7, 8]],
        [[5.0, 6, 7, 8]],
    ):
        want = torch.tensor(x).nonzero().T.float()
        assert torch.equal(module(torch.tensor(x)), want)
    assert not module.runner.bound  # after the first misfit nothing is bound again


def test_buffers_bound_under_inference_mode_serve_calls_outside_it(matmul_onnx):
    """The harness binds under torch.inference_mode; a later plain call must still use the buffers."""
    module, plain = OnnxModule(matmul_onnx), plain_session(matmul_onnx)
    x = torch.randn(3, 2, 3)
    with torch.inference_mode():
        module(x)
        module(x)
    y = torch.randn(3, 2, 3)
    assert torch.equal(module(y), torch.from_numpy(plain.run(None, {"x": y.numpy()})[0]))
    assert len(module.runner.bound) == 1 and module.runner.max_shapes > 0
