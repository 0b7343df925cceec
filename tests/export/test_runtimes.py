"""Every runtime through the same harness: parity with PyTorch within the precision's tolerance, the
latency harness, the file's precision, and onnxruntime's execution providers chosen from what is there."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.errors import DistillError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny CNN and its float32, float16 and int8 (static QDQ) files, made once."""
    from distill.export import export_onnx
    from distill.export.quantize import quantize_onnx
    from distill.export.runtimes import convert_float16

    folder = tmp_path_factory.mktemp("runtimes")
    model, x = tiny_cnn(), torch.randn(16, 1, 12, 12)
    fp32 = export_onnx(model, x[:4], folder / "m.onnx")
    fp16 = convert_float16(fp32, folder / "m.fp16.onnx")
    int8 = quantize_onnx(fp32, folder / "m.int8.onnx", calibration=[x], keep_float=())
    return model, x, {"float32": fp32, "float16": fp16, "int8": int8}


def test_file_precision_is_read_from_the_graph(files):
    from distill.export.runtimes import file_precision

    _, _, paths = files
    assert {k: file_precision(p) for k, p in paths.items()} == {
        "float32": "float32",
        "float16": "float16",
        "int8": "int8",
    }
    assert paths["float16"].stat().st_size < paths["float32"].stat().st_size  # weights halved


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_each_runtime_matches_pytorch_within_its_precisions_tolerance(files, runtime, precision):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    from distill.export.runtime import check_parity
    from distill.export.runtimes import TOLERANCES, load

    model, x, paths = files
    module = load(runtime, paths[precision], threads=1)
    assert module.runtime == runtime and module.size_bytes == paths[precision].stat().st_size
    rtol, atol = TOLERANCES[precision]
    report = check_parity(model, paths[precision], x, rtol=rtol, atol=atol, runner=module)
    assert report.ok, report
    assert report.n == 16
    if precision == "float16":  # the float16 file really is less exact than the float32 one
        strict = check_parity(model, paths["float32"], x, runner=load(runtime, paths["float32"]))
        assert report.max_abs_diff > strict.max_abs_diff


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_int8_file_agrees_with_pytorch_on_top1_and_is_timed(files, runtime):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    from distill.export import measure_latency
    from distill.export.runtimes import load

    model, x, paths = files
    module = load(runtime, paths["int8"])
    got = module(x)
    assert got.shape == (16, 10) and got.dtype == torch.float32
    agree = (got.argmax(1) == model(x).argmax(1)).float().mean()
    assert agree >= 0.75
    found = measure_latency(module, x[0], batch_sizes=(1, 4), threads=(1, None), repeats=2)
    assert set(found) >= {"latency_ms_b1_t1", "latency_ms_b4_tall"}
    assert all(v > 0 for v in found.values())


def test_openvino_wrapper_refuses_wrong_inputs_in_one_line(files):
    pytest.importorskip("openvino")
    from distill.export.runtimes import load

    _, x, paths = files
    module = load("openvino", paths["float32"])
    with pytest.raises(DistillError, match=r"takes the inputs \['input'\]"):
        module(x, mask=x)
    with pytest.raises(DistillError, match="not found"):
        load("openvino", paths["float32"].with_name("missing.onnx"))


def test_unknown_runtime_suggests_close_names():
    from distill.export.runtimes import load

    with pytest.raises(DistillError, match="Did you mean 'openvino'"):
        load("openvno", "any.onnx")


@pytest.mark.parametrize(
    ("available", "device", "expected"),
    [
        (["CPUExecutionProvider"], "cpu", ["CPUExecutionProvider"]),
        (["CPUExecutionProvider"], "auto", ["CPUExecutionProvider"]),
        (
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            "auto",
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
        (
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            "auto",
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
        (
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            "cuda",
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
        (
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            "cpu",
            ["CPUExecutionProvider"],
        ),
    ],
)
def test_providers_are_chosen_from_what_onnxruntime_has(available, device, expected):
    from distill.export.runtime import choose_providers

    assert choose_providers(available, device) == expected


def test_asking_for_a_missing_gpu_provider_is_one_line():
    from distill.export.runtime import choose_providers

    with pytest.raises(DistillError, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
        choose_providers(["CPUExecutionProvider"], "cuda")
    with pytest.raises(DistillError, match="no TensorrtExecutionProvider"):
        choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], "tensorrt")
    with pytest.raises(DistillError, match="Did you mean 'cuda'"):
        choose_providers(["CPUExecutionProvider"], "cdua")


def test_gpu_runtime_passes_the_chosen_providers_to_the_session(files, monkeypatch):
    """``onnxruntime-cuda`` asks onnxruntime which providers it has and opens the session with CUDA
    first (availability mocked: this machine may have no GPU)."""
    import onnxruntime

    from distill.export import runtime as runtime_module
    from distill.export.runtimes import load

    _, _, paths = files
    seen = {}
    real = runtime_module.inference_session

    def recording(path, threads=None, providers=None):
        seen["providers"] = providers
        return real(path, threads)  # the CPU session: the mocked CUDA provider does not exist

    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: available)
    monkeypatch.setattr(runtime_module, "inference_session", recording)
    module = load("onnxruntime-cuda", paths["float32"])
    assert seen["providers"] == available and module.providers == available
    assert module.with_threads(1).providers == available


def test_executorch_file_matches_pytorch_and_is_benched(tmp_path):
    """ExecuTorch (``.pte``, XNNPACK, a fixed batch): parity at float32 tolerance, timed by the harness
    and by ``distill bench`` with its one thread pool; another thread count is refused in one line."""
    pytest.importorskip("executorch")
    from distill.export import measure_latency
    from distill.export.bench import bench
    from distill.export.runtime import check_parity
    from distill.export.runtimes import TOLERANCES, export_executorch, load

    model, x = tiny_cnn(), torch.randn(4, 1, 12, 12)
    path = export_executorch(model, x, tmp_path / "m.pte", batch=4)
    module = load("executorch", path)
    report = check_parity(model, path, x, *TOLERANCES["float32"], runner=module)
    assert report.ok and report.n == 4, report
    found = measure_latency(module, x[0], batch_sizes=(4,), threads=(None,), repeats=2)
    assert all(v > 0 for v in found.values()) and len(found) == 2
    result = bench(path, runtime="executorch", batch=4, threads=None, repeats=2, warmup=1)
    assert result["precision"] == "float32" and result["latency_ms"] > 0
    with pytest.raises(DistillError, match="takes one input tensor"):
        module(input=x)
    with pytest.raises(DistillError, match="thread pool here has"):
        load("executorch", path, threads=64)
