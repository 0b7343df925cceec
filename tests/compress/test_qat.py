"""Quantization-aware training on torchao's PT2E flow: fake-quant observers are inserted (first/last layers
kept float on request), KD fine-tuning from the float model lowers the KD loss, the int8 ONNX export has
QDQ pairs that onnxruntime fuses into integer kernels and matches the fake-quant model, layers the
quantizer does not know stay float, and the deprecated torch.ao.quantization QAT API is never called."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from distill.compress.qat import (
    export_qat_onnx,
    fake_quantizers,
    int8_layers,
    prepare_qat,
    qat_distill,
    qat_run,
    to_reference,
)
from distill.errors import DistillError
from distill.losses import build_loss
from distill.models import build_model
from distill.tasks import build_task
from distill.train.config import TrainConfig
from helpers import tiny_recipe_dict

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torchao")

CHANNELS = [4, 8, 16, 32]


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 classes: a bright blob in the top-left, centre or bottom-right of a noisy 16x16 image."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 16, 16, generator=g)
    for c, r in enumerate((2, 6, 10)):
        x[y == c, :, r : r + 4, r : r + 4] += 1.5
    return x, y


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", num_classes=3, in_channels=1, channels=CHANNELS).eval()


def observed(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """``prepare_qat`` (every layer) then training-mode passes so the observers have seen real ranges."""
    qat = prepare_qat(model, x[:8], keep_float=())
    for batch in x.split(32):
        qat(batch)
    return qat.eval()


LAYERS = ["features.0.0", "features.1.0", "features.2.0", "features.3.0", "classifier.1"]


def test_prepare_inserts_fake_quant_and_keeps_first_last_float():
    model, (x, _) = cnn(), images(16, 0)
    everything = prepare_qat(model, x[:4], keep_float=())
    assert fake_quantizers(everything) and fake_quantizers(model) == []  # the float model untouched
    with torch.no_grad():
        everything(x)  # observes the activations' ranges (in training mode; eval() freezes them)
        reference = copy.deepcopy(model).train()
        reference(x)  # the same BatchNorm statistics update as the QAT copy's training pass
    assert int8_layers(everything) == LAYERS  # every conv and the linear head
    default = prepare_qat(model, x[:4])
    assert int8_layers(default) == LAYERS[1:-1]  # first conv and head: float
    with torch.no_grad():  # fake quantization changes the outputs only a little
        ref, out = reference.eval()(x), everything.eval()(x)
        assert everything(x[:1]).shape == (1, 3)  # the batch dimension stays dynamic, down to 1
    assert not torch.equal(ref, out)
    assert torch.allclose(ref, out, atol=0.2 * float(ref.abs().max()) + 1e-3)


def test_training_mode_computes_what_the_eager_model_computes():
    """With fake quantization off, the captured graph in training mode is the model in training mode:
    same outputs (BatchNorm on batch statistics, dropout at the model's own rate: torchao's train
    switch alone sets every dropout to 0.5) and the same gradients."""
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=3, in_channels=1, channels=[4, 8], dropout=0.0)
    x = images(16, 0)[0]
    qat = prepare_qat(model.eval(), x[:8], keep_float=())
    qat.apply(__import__("torchao").quantization.pt2e.disable_fake_quant)
    eager = copy.deepcopy(model).train()
    qat.eval().train()  # switched back and forth, as the Trainer does
    out, want = qat(x), eager(x)
    assert torch.allclose(out, want, atol=1e-5)
    out.square().sum().backward()
    want.square().sum().backward()
    grads = dict(eager.named_parameters())
    for name, p in qat.named_parameters():
        assert torch.allclose(p.grad, grads[name].grad, rtol=1e-4, atol=1e-5), name


def test_qat_distill_lowers_kd_loss_on_a_fixed_batch():
    x, y = images(64, 1)
    teacher, student = cnn(seed=1), cnn(seed=2)
    qat = prepare_qat(student, x[:8], keep_float=())
    with torch.no_grad():
        qat(x)  # the activations' ranges are observed in training mode (eval() freezes them)
    kd = build_loss("kd", temperature=4.0)

    def kd_loss() -> float:
        qat.eval()
        with torch.no_grad():
            return float(kd(qat(x), teacher(x)))

    before = kd_loss()
    loader = DataLoader([(x, y)] * 5, batch_size=None)  # five steps on the same batch
    config = TrainConfig(batch_size=64, progress=False, device="cpu", weight_decay=0.0)
    summary = qat_distill(qat, teacher, build_task("classification"), loader, epochs=1, lr=0.05,
                          task_weight=0.0, config=config)  # fmt: skip
    assert summary["steps"] == 5
    assert kd_loss() < 0.8 * before
    assert fake_quantizers(qat)  # still fake-quantized after training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_qat_trains_on_the_gpu_and_exports_on_the_cpu(tmp_path):
    x, y = images(64, 1)
    qat = prepare_qat(cnn(seed=2), x[:8], keep_float=())
    with torch.no_grad():
        qat(x)
    loader = DataLoader([(x, y)] * 3, batch_size=None)
    config = TrainConfig(batch_size=64, progress=False, device="cuda", weight_decay=0.0)
    summary = qat_distill(qat, cnn(seed=1), build_task("classification"), loader, epochs=1, lr=0.05,
                          config=config)  # fmt: skip
    assert summary["steps"] == 3
    assert {p.device.type for p in qat.parameters()} == {"cpu"}  # handed back on the CPU
    assert export_qat_onnx(qat, x[:8], tmp_path / "gpu.onnx").is_file()


def trained_cnn() -> nn.Module:
    model, (x, y) = cnn().train(), images(512, 0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(40):
        i = torch.arange(64) + 64 * (step % 8)
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_export_is_int8_qdq_fused_by_onnxruntime_and_matches_fake_quant(tmp_path):
    x, _ = images(128, 2)
    qat = observed(trained_cnn(), x)
    path = export_qat_onnx(qat, x[:8], tmp_path / "qat.onnx")
    graph = onnx.load(str(path)).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    int8 = [
        t.name
        for t in graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2
    ]
    assert len(int8) >= len(CHANNELS) + 1  # weights are stored as int8, not quantized at run time
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    assert fused["QLinearConv"] == len(CHANNELS) and fused["QGemm"] == 1  # integer kernels only
    assert fused["Conv"] + fused["FusedConv"] + fused["Gemm"] == 0
    with torch.no_grad():
        fake, reference = qat(x), to_reference(qat)(x)
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    scale = float(fake.abs().max())
    assert (got - reference).abs().max() <= 0.1 * scale  # same int8 graph, rounding flips only
    assert (got - fake).abs().max() <= 0.1 * scale
    assert got.argmax(1).eq(fake.argmax(1)).float().mean() >= 0.95


def test_layers_the_quantizer_does_not_know_stay_float_and_bad_names_are_errors():
    x = torch.randn(4, 1, 8, 8)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LayerNorm(144), nn.Linear(144, 3))
    qat = prepare_qat(model, x, keep_float=())  # the LayerNorm runs in float between int8 layers
    qat(x)  # observes the activations' ranges
    reference = to_reference(qat.eval())
    assert int8_layers(reference) == ["0", "3"]
    ops = {str(n.target) for n in reference.graph.nodes}
    assert "aten.layer_norm.default" in ops
    with torch.no_grad():
        assert torch.allclose(reference(x), model(x), atol=0.2 * float(model(x).abs().max()))
    with pytest.raises(DistillError, match="'classifer'.*Did you mean 'classifier"):
        prepare_qat(cnn(), torch.randn(2, 1, 16, 16), keep_float=["classifer"])
    with pytest.raises(DistillError, match="one tensor input, got dict.*dynamic int8"):
        prepare_qat(model, {"input_ids": torch.zeros(2, 3, dtype=torch.long)})


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x) if x.sum() > 0 else -self.head(x)


def test_untraceable_model_is_a_clear_error():
    with pytest.raises(DistillError, match="QAT cannot trace.*branch on tensor values"):
        prepare_qat(Branchy(), torch.randn(2, 4), keep_float=())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from distill import api

    folder = tmp_path_factory.mktemp("qat-run")
    recipe = folder / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(folder / "run")))
    api.train(recipe)
    return folder / "run"


# torch.ao.quantization's QAT entry points, deprecated in favour of torchao's PT2E flow
DEPRECATED = {
    "torch.ao.quantization": ["prepare_qat", "convert", "quantize_qat", "prepare", "fuse_modules"],
    "torch.ao.quantization.quantize_fx": [
        "prepare_qat_fx",
        "prepare_fx",
        "convert_fx",
        "convert_to_reference_fx",
        "_convert_to_reference_decomposed_fx",
    ],
}


@pytest.fixture
def deprecated_api_refused(monkeypatch):
    """Every deprecated QAT entry point raises when called."""
    import importlib

    for module, names in DEPRECATED.items():
        loaded = importlib.import_module(module)
        for name in names:

            def refuse(*args, _name=f"{module}.{name}", **kwargs):
                raise AssertionError(f"the deprecated {_name} was called")

            monkeypatch.setattr(loaded, name, refuse)


def test_no_deprecated_quantization_api_in_the_source():
    """No module of src/distill imports torch.ao.quantization or names it in an attribute chain or an
    import_module string (its eager and FX QAT are deprecated; QAT goes through torchao)."""
    import ast

    import distill

    found = []
    for path in Path(distill.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Attribute):
                names = [ast.unparse(node)]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value]
            else:
                continue
            found += [f"{path.name}: {n}" for n in names if n.startswith("torch.ao.quantization")]
    assert not found


def test_qat_run_end_to_end(run_dir, deprecated_api_refused):
    result = qat_run(run_dir, epochs=1)
    saved = json.loads((run_dir / "qat" / "qat.json").read_text())
    assert Path(result["file"]).is_file() and saved["file"] == "student.qat.int8.onnx"
    assert saved["flow"].startswith("torchao ") and "prepare_qat_pt2e" in saved["flow"]
    assert saved["device"] == "cpu" and saved["int8_layers"] == ["features.1.0"]  # cnn [4, 8]
    metrics = saved["metrics"]
    assert set(metrics) == {"float", "fake_quant", "onnx_int8"}
    # 128 test images: the int8 file and the fake-quant model disagree on a few at most
    assert abs(metrics["onnx_int8"]["top1"] - metrics["fake_quant"]["top1"]) <= 5.0
    with pytest.raises(DistillError, match="epochs must be an int >= 1"):
        qat_run(run_dir, epochs=0)


def test_export_cli_qat_epochs(run_dir, tmp_path, capsys, monkeypatch):
    from distill.cli import export as export_cli
    from distill.cli import main

    monkeypatch.setattr(export_cli.console, "_width", 160)
    code = main(["export", str(run_dir), "--qat-epochs", "1", "--out", str(tmp_path / "e")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "qat int8" in out and "student.qat.int8.onnx" in out
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        "export.json",
        "qat.json",
        "student.onnx",
        "student.qat.int8.onnx",
    ]
    assert main(["export", str(run_dir), "--qat-epochs", "-1"]) == 2
    assert "--qat-epochs must be >= 0" in capsys.readouterr().err
