"""Model zoo: every registered model builds, runs and backpropagates; adapters and errors."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.models import (
    MODELS,
    build_model,
    count_parameters,
    model_options,
    model_size_bytes,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Batch-2 passes gain nothing from intra-op threads, which stall on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _options_for(name: str, size: int) -> dict[str, int]:
    """Models with a fixed input size (the MLP) are built for the size under test."""
    return {"image_size": size} if "image_size" in model_options(name) else {}


# language models (token ids in, (B, T, V) out) are looped over in tests/lm/test_gpt.py
IMAGE_MODELS = [n for n in MODELS.names() if MODELS.meta(n)["family"] != "gpt"]


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_model_forward_backward(name: str, in_channels: int) -> None:
    """[2, C, 28, 28] and [2, C, 32, 32] give finite [2, num_classes] logits; gradients flow."""
    torch.manual_seed(0)
    model = None
    for size in (28, 32):
        if model is None or _options_for(name, size):
            model = build_model(
                name, num_classes=7, in_channels=in_channels, **_options_for(name, size)
            )
        assert count_parameters(model) > 0
        logits = model(torch.randn(2, in_channels, size, size))
        assert logits.shape == (2, 7)
        assert torch.isfinite(logits).all()
    logits.sum().backward()  # one backward (at 32x32) keeps the suite fast
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", MODELS.names())
def test_registry_meta(name: str) -> None:
    meta = MODELS.meta(name)
    assert meta["family"] and meta["description"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet8x4", 1_233_540), ("resnet32x4", 7_433_860)],  # RepDistiller: 1.23M / 7.43M
)
def test_x4_resnet_parameter_counts(name: str, expected: int) -> None:
    model = build_model(name, num_classes=100, in_channels=3)
    assert count_parameters(model) == pytest.approx(expected, rel=0.10)


def test_resnet_family_depths() -> None:
    counts = [count_parameters(build_model(f"resnet{d}")) for d in (8, 14, 20, 32, 44, 56, 110)]
    assert counts == sorted(counts)
    assert count_parameters(build_model("resnet56", num_classes=100, in_channels=3)) == (
        pytest.approx(861_620, rel=0.02)  # the 0.86M quoted in KD papers
    )


@pytest.mark.parametrize(
    ("name", "taps"),
    [
        ("cnn", ["features.0", "features.1", "features.2", "pool", "classifier"]),
        ("cnn_small", ["features.0", "features.2"]),
        ("cnn_large", ["features.0", "features.2"]),
        ("mlp", ["layers", "layers.1", "classifier"]),
        ("mobilenet_small", ["features.0", "features.1", "pool", "classifier"]),
        ("resnet8", ["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "fc"]),
        ("resnet32x4", ["conv1", "layer1", "layer2", "layer3", "avgpool", "fc"]),
    ],
)
def test_tap_names(name: str, taps: list[str]) -> None:
    model = build_model(name)
    for tap in taps:
        assert isinstance(model.get_submodule(tap), nn.Module)


def test_resnet_stage_shapes() -> None:
    model = build_model("resnet8x4", in_channels=3).eval()
    shapes = {}
    for tap in ("layer1", "layer2", "layer3"):
        model.get_submodule(tap).register_forward_hook(
            lambda _m, _i, out, tap=tap: shapes.__setitem__(tap, tuple(out.shape))
        )
    model(torch.zeros(1, 3, 32, 32))
    assert shapes == {
        "layer1": (1, 64, 32, 32),
        "layer2": (1, 128, 16, 16),
        "layer3": (1, 256, 8, 8),
    }


def test_cnn_options() -> None:
    model = build_model("cnn", channels=[4, 8], convs_per_stage=2, hidden=16, dropout=0.1)
    assert len(model.features) == 2
    assert isinstance(model.classifier[0], nn.Linear) and model.classifier[0].out_features == 16
    no_bn = build_model("cnn_small", batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in no_bn.modules())
    assert model_options("cnn_small")["channels"] == (8, 16, 32)


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("cnn", {"channels": []}, "channels=[]"),
        ("cnn", {"channels": [8, 0]}, "channels=[8, 0]"),
        ("cnn", {"convs_per_stage": 0}, "convs_per_stage=0"),
        ("cnn_large", {"dropout": 1.0}, "dropout=1.0"),
        ("mlp", {"image_size": [28]}, "image_size=[28]"),
        ("mlp", {"hidden": [0]}, "hidden=[0]"),
        ("mobilenet_small", {"width_mult": 0}, "width_mult=0"),
    ],
)
def test_invalid_options(name: str, options: dict, fragment: str) -> None:
    with pytest.raises(DistillError, match=re.escape(fragment)) as info:
        build_model(name, **options)
    assert "\n" not in str(info.value)


def test_unknown_model_name() -> None:
    with pytest.raises(DistillError, match="'resnet32x4'") as info:
        build_model("resnet32x5")
    assert "\n" not in str(info.value)


def test_unknown_option_names_close_match_and_accepted() -> None:
    with pytest.raises(DistillError, match="'dropuot'") as info:
        build_model("cnn", dropuot=0.1)
    message = str(info.value)
    assert "Did you mean 'dropout'" in message
    assert "convs_per_stage" in message  # lists the accepted options
    with pytest.raises(DistillError, match="Accepted options: \\(none\\)"):
        build_model("resnet20", width=2)
    with pytest.raises(DistillError, match="'hiden'.*'hidden'"):
        build_model("cnn_small", hiden=8)  # presets validate against the base signature


def test_invalid_common_args_and_source() -> None:
    with pytest.raises(DistillError, match="num_classes=0"):
        build_model("cnn", num_classes=0)
    with pytest.raises(DistillError, match="'torchvison'.*'torchvision'"):
        build_model("torchvison:resnet18")


def test_mlp_input_size_mismatch() -> None:
    model = build_model("mlp", image_size=(28, 28))
    with pytest.raises(DistillError, match="image_size=\\[32, 32\\]"):
        model(torch.zeros(1, 1, 32, 32))
    assert build_model("mlp", image_size=(20, 24))(torch.zeros(1, 1, 20, 24)).shape == (1, 10)


def test_parameter_and_size_accounting() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model[0].weight.requires_grad_(False)
    assert count_parameters(model) == 3 * 4 + 4 + 4 + 4
    assert count_parameters(model, trainable_only=True) == 4 + 4 + 4
    # fp32 params (24 elems) + running mean/var fp32 (8) + num_batches_tracked int64 (1)
    assert model_size_bytes(model) == 24 * 4 + 8 * 4 + 8
    assert model_size_bytes(model.half()) == 24 * 2 + 8 * 2 + 8


# --- torchvision / timm adapters (random init only: tests never download weights) --------------


def test_torchvision_adapter() -> None:
    pytest.importorskip("torchvision")
    model = build_model("torchvision:resnet18", num_classes=10, in_channels=1)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(DistillError, match="'resnet18'"):
        build_model("torchvision:resnet81")
    with pytest.raises(DistillError, match="rejected options"):
        build_model("torchvision:resnet18", bogus=1)


def test_torchvision_first_conv_and_head_adaptation() -> None:
    pytest.importorskip("torchvision")
    from distill.models import _adapt_first_conv, _replace_classifier

    model = build_model("torchvision:mobilenet_v3_small", num_classes=1000, in_channels=3)
    rgb = model.features[0][0].weight.detach().clone()
    _adapt_first_conv(model, 1, pretrained=True, name="test")
    _replace_classifier(model, 5, 1000, name="test")
    torch.testing.assert_close(model.features[0][0].weight, rgb.sum(dim=1, keepdim=True))
    assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_timm_adapter() -> None:
    pytest.importorskip("timm")
    model = build_model("timm:resnet10t", num_classes=10, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(DistillError, match="'resnet10t'"):
        build_model("timm:resnet10x")


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_vision_extra_missing(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, source, None)  # makes `import <source>` raise ImportError
    with pytest.raises(DistillError, match="pip install 'distill\\[vision\\]'") as info:
        build_model(f"{source}:resnet18")
    assert "\n" not in str(info.value)
