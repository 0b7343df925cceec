"""int8 quantization of ONNX files: a trained model keeps its accuracy (static and dynamic), layers kept in
float stay float, and bad requests (no calibration, unknown op types or nodes, bad mode) are clear errors
that write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.export import OnnxModule, export_onnx
from distill.export.quantize import (
    first_and_last_layers,
    node_names,
    quantize_onnx,
    supported_op_types,
)
from distill.models import build_model

onnx = pytest.importorskip("onnx")


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 classes: a bright blob in the top-left, centre or bottom-right of a noisy 16x16 image."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 16, 16, generator=g)
    for c, (r, k) in enumerate([(2, 2), (6, 6), (10, 10)]):
        x[y == c, :, r : r + 4, k : k + 4] += 1.5
    return x, y


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=3, in_channels=1, channels=[4, 8], hidden=16)
    x, y = synthetic(512, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(80):
        i = torch.arange(64) + 64 * (step % 8)
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = export_onnx(model, x[:8], tmp_path_factory.mktemp("q") / "fp32.onnx")
    return model, path


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * model(x).argmax(1).eq(y).float().mean().item()


def calibration() -> list[torch.Tensor]:
    x, _ = synthetic(256, seed=1)
    return list(x.split(64))


@pytest.mark.parametrize("mode", ["static", "dynamic"])
@pytest.mark.parametrize("keep_float", ["first_last", ()])
def test_int8_keeps_the_accuracy_of_the_float_model(trained, tmp_path, mode, keep_float):
    model, fp32 = trained
    x, y = synthetic(600, seed=2)
    reference = accuracy(model, x, y)
    assert reference > 90  # the task is learnt, so a broken quantization would show
    out = quantize_onnx(
        fp32,
        tmp_path / "q.onnx",
        mode=mode,
        calibration=calibration() if mode == "static" else None,
        keep_float=keep_float,
    )
    int8 = OnnxModule(out)
    assert accuracy(int8, x, y) >= reference - 1.0
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    expected = {"QuantizeLinear", "DequantizeLinear"} if mode == "static" else {"ConvInteger"}
    assert expected <= ops
    with torch.no_grad():
        agree = int8(x).argmax(1).eq(model(x).argmax(1)).float().mean().item()
    assert agree > 0.97


def test_keep_float_leaves_the_named_layer_in_float(trained, tmp_path):
    _, fp32 = trained
    first_conv = node_names(fp32, "Conv")[0]
    out = quantize_onnx(
        fp32, tmp_path / "q.onnx", calibration=calibration(), keep_float=[first_conv]
    )
    graph = onnx.load(str(out)).graph
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    by_name = {n.name: n for n in convs}
    assert produced_by.get(by_name[first_conv].input[1]) is None  # weight is a float initializer
    others = [n for n in convs if n.name != first_conv]
    assert others and all(produced_by.get(n.input[1]) == "DequantizeLinear" for n in others)


def test_first_and_last_layers(trained):
    _, fp32 = trained
    convs, gemms = node_names(fp32, "Conv"), node_names(fp32, "Gemm")
    assert len(convs) == 2 and len(gemms) == 2  # two stages, a hidden layer and the classifier
    assert first_and_last_layers(fp32) == [convs[0], gemms[-1]]


def test_default_keeps_first_and_last_layers_in_float(trained, tmp_path):
    _, fp32 = trained
    out = quantize_onnx(fp32, tmp_path / "q.onnx", calibration=calibration())
    graph = onnx.load(str(out)).graph
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    quantized = {
        n.name
        for n in graph.node
        if len(n.input) > 1 and produced_by.get(n.input[1]) == "DequantizeLinear"
    }
    first, last = first_and_last_layers(fp32)
    assert first not in quantized and last not in quantized
    assert {node_names(fp32, "Conv")[1], node_names(fp32, "Gemm")[0]} <= quantized


def test_static_without_calibration_is_refused(trained, tmp_path):
    _, fp32 = trained
    with pytest.raises(DistillError, match="needs calibration data.*mode='dynamic'"):
        quantize_onnx(fp32, tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


def test_empty_or_wrong_calibration_is_refused(trained, tmp_path):
    _, fp32 = trained
    with pytest.raises(DistillError, match="calibration data is empty"):
        quantize_onnx(fp32, tmp_path / "q.onnx", calibration=[])
    with pytest.raises(DistillError, match="input tensors"):
        quantize_onnx(fp32, tmp_path / "q.onnx", calibration=[(torch.zeros(2, 1, 16, 16), 0)])
    assert not (tmp_path / "q.onnx").exists()


def test_op_types_the_backend_cannot_quantize_are_named(trained, tmp_path):
    _, fp32 = trained
    assert "Conv" in supported_op_types("static")
    with pytest.raises(
        DistillError, match=r"'Softmax', 'Foo' in static mode.*It can quantize: .*Conv"
    ):
        quantize_onnx(
            fp32,
            tmp_path / "q.onnx",
            calibration=calibration(),
            op_types=["Conv", "Softmax", "Foo"],
        )


def test_unknown_node_mode_and_method_are_refused(trained, tmp_path):
    _, fp32 = trained
    name = node_names(fp32, "Conv")[0]
    with pytest.raises(DistillError, match=rf"node '{name[:-1]}'.*Did you mean .*'{name}'"):
        quantize_onnx(fp32, tmp_path / "q.onnx", calibration=calibration(), keep_float=[name[:-1]])
    with pytest.raises(DistillError, match="mode 'statc'.*Did you mean 'static'"):
        quantize_onnx(fp32, tmp_path / "q.onnx", mode="statc", calibration=calibration())  # type: ignore[arg-type]
    with pytest.raises(DistillError, match="calibrate_method 'minimax'.*'minmax'"):
        quantize_onnx(
            fp32, tmp_path / "q.onnx", calibration=calibration(), calibrate_method="minimax"
        )
    with pytest.raises(DistillError, match="list of node names or 'first_last'"):
        quantize_onnx(fp32, tmp_path / "q.onnx", calibration=calibration(), keep_float="first")
    with pytest.raises(DistillError, match="not found"):
        quantize_onnx(tmp_path / "missing.onnx", tmp_path / "q.onnx", mode="dynamic")
    assert list(tmp_path.iterdir()) == []


def test_qdq_propagation_is_off_and_changes_no_output(trained, tmp_path):
    """distill's sessions skip onnxruntime's QDQ propagation (pooling after the float first layer stays in
    float, faster); pooling commutes with quantization, so outputs equal onnxruntime's defaults exactly."""
    ort = pytest.importorskip("onnxruntime")
    _, fp32 = trained
    out = quantize_onnx(fp32, tmp_path / "q.onnx", calibration=calibration())
    x, _ = synthetic(64, seed=3)
    default = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    expected = torch.from_numpy(default.run(None, {default.get_inputs()[0].name: x.numpy()})[0])
    module = OnnxModule(out)
    options = module.session.get_session_options()
    disabled = options.get_session_config_entry("optimization.disable_specified_optimizers")
    assert "QDQPropagationTransformer" in disabled.split(",")
    assert torch.equal(module(x), expected)
    assert torch.equal(module(x[:1]), expected[:1])


def test_failed_preprocessing_leaves_nothing_in_the_working_directory(
    trained, tmp_path, monkeypatch
):
    """onnxruntime's symbolic shape inference saves ``sym_shape_infer_temp.onnx`` (+ weights) into the
    current directory when it gives up; distill runs it in its temporary folder and retries without it."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    _, fp32 = trained
    real, calls = quantization.quant_pre_process, []

    def gives_up_on_symbolic_shapes(src, dst, skip_symbolic_shape=False, **kwargs):
        calls.append(skip_symbolic_shape)
        if not skip_symbolic_shape:
            Path("sym_shape_infer_temp.onnx").write_bytes(b"partial")  # what onnxruntime does
            raise Exception("Incomplete symbolic shape inference")  # noqa: TRY002 - as onnxruntime
        return real(src, dst, skip_symbolic_shape=skip_symbolic_shape, **kwargs)

    monkeypatch.setattr(quantization, "quant_pre_process", gives_up_on_symbolic_shapes)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    out = quantize_onnx(fp32, tmp_path / "q.onnx", calibration=calibration())
    assert calls == [False, True]
    assert list(work.iterdir()) == [] and Path.cwd() == work
    assert {"QuantizeLinear", "DequantizeLinear"} <= {
        n.op_type for n in onnx.load(str(out)).graph.node
    }
