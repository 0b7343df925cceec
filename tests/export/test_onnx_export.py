"""ONNX export: parity with PyTorch at any batch size, the same task evaluation through OnnxModule, and the
clear errors (data-dependent control flow, opsets, a file that fails parity is not kept, missing extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.export import OnnxModule, ParityError, check_parity, export_onnx
from distill.models import build_model
from distill.tasks.classification import ClassificationTask

pytest.importorskip("onnxruntime")


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("cnn", num_classes=5, in_channels=1, channels=[4, 8], hidden=8)
    with torch.no_grad():  # non-trivial BN statistics, so eval-mode folding is exercised
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[nn.Module, Path]:
    model = tiny_cnn()
    model.train()  # export must use eval mode and hand the model back as it was
    path = export_onnx(model, torch.randn(4, 1, 16, 16), tmp_path_factory.mktemp("onnx") / "m.onnx")
    assert model.training
    return model.eval(), path


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_dynamic_batch_matches_pytorch(exported, batch):
    model, path = exported
    x = torch.randn(batch, 1, 16, 16)
    with torch.no_grad():
        expected = model(x)
    got = OnnxModule(path)(x)
    assert got.dtype == torch.float32 and got.shape == (batch, 5)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_file_is_self_contained(exported, tmp_path):
    _, path = exported
    moved = tmp_path / "elsewhere.onnx"
    moved.write_bytes(path.read_bytes())  # weights must travel inside the one file
    assert not list(path.parent.glob("*.data"))
    module = OnnxModule(moved, threads=1)
    assert module.size_bytes == moved.stat().st_size
    assert module(torch.randn(2, 1, 16, 16)).shape == (2, 5)


def test_task_evaluation_runs_unchanged_on_the_onnx_module(exported):
    model, path = exported
    g = torch.Generator().manual_seed(1)
    loader = [(torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 5, (8,), generator=g))] * 3
    task = ClassificationTask()
    reference = task.evaluate(model, loader)
    onnx_metrics = task.evaluate(OnnxModule(path), loader, teacher=model)
    assert onnx_metrics["top1"] == reference["top1"]
    assert onnx_metrics["nll"] == pytest.approx(reference["nll"], abs=1e-5)
    assert onnx_metrics["agreement"] == 100.0


def test_parity_report_catches_a_different_model(exported):
    model, path = exported
    x = torch.randn(6, 1, 16, 16)
    assert check_parity(model, path, x).ok
    other = tiny_cnn(seed=1).eval()
    report = check_parity(other, path, x)
    assert not report.ok and report.n == 6 and report.max_abs_diff > report.atol


class ExportsDifferently(nn.Module):
    """Stands for any model whose exported graph differs from what eager PyTorch computes."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y + 1.0 if torch.compiler.is_exporting() else y


def test_a_file_failing_parity_is_deleted(tmp_path):
    path = tmp_path / "bad.onnx"
    with pytest.raises(ParityError, match=r"max abs difference 1 .*not kept"):
        export_onnx(ExportsDifferently(), torch.randn(4, 3), path)
    assert list(tmp_path.iterdir()) == []


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent: tracing would silently keep one branch
            return self.head(x)
        return -self.head(x)


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.pre(x))


def test_data_dependent_control_flow_names_the_module(tmp_path):
    with pytest.raises(DistillError, match=r"module 'gate'.*branches on tensor values") as info:
        export_onnx(Branchy(), torch.randn(3, 4), tmp_path / "b.onnx")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opset", [9, 17, 99, "18"])
def test_opsets_the_exporter_lacks_are_refused_before_exporting(tmp_path, opset):
    with pytest.raises(DistillError, match=rf"opset {opset!r} is not available.*pick one"):
        export_onnx(tiny_cnn(), torch.randn(2, 1, 16, 16), tmp_path / "m.onnx", opset=opset)


def test_requested_opset_and_fixed_batch(tmp_path):
    import onnx

    path = export_onnx(
        tiny_cnn(), torch.randn(2, 1, 16, 16), tmp_path / "m.onnx", opset=20, dynamic_batch=False
    )
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain == ""] == [20]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_missing_extra_says_how_to_install(monkeypatch):
    import importlib

    from distill.export import _deps

    real = importlib.import_module

    def fake(name, *args):
        if name.startswith("onnxruntime"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(_deps.importlib, "import_module", fake)
    with pytest.raises(DistillError, match=r"pip install 'distill\[export\]'"):
        OnnxModule("any.onnx")


def test_import_distill_does_not_import_onnx():
    code = (
        "import sys, distill, distill.export, distill.export.quantize, distill.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'onnx', 'onnxruntime', 'onnxscript'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
