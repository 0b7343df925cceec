"""Structured channel pruning (torch-pruning): a really smaller model, kept filters, clear refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.compress.prune import channel_prune, layer_shapes, load_pruned, save_pruned
from distill.errors import DistillError
from distill.models import build_model, count_parameters

pytest.importorskip("torch_pruning")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def teacher() -> nn.Module:
    torch.manual_seed(0)
    return build_model("cnn", num_classes=10, in_channels=1, channels=[8, 16], hidden=32)


EXAMPLE = torch.randn(2, 1, 12, 12)


def test_channel_pruning_shrinks_the_network_and_keeps_original_filters():
    model = teacher().eval()
    pruned = channel_prune(model, EXAMPLE, 0.5)
    shapes = layer_shapes(pruned)
    assert (
        shapes["features.0.0"]["out_channels"] == 4 and shapes["features.1.0"]["out_channels"] == 8
    )
    assert shapes["features.0.1"]["num_features"] == 4  # the BatchNorm follows its conv
    assert shapes["classifier.0"] == {"in_features": 8, "out_features": 16}
    assert shapes["classifier.3"]["out_features"] == 10  # the classifier keeps one output per class
    assert count_parameters(pruned) < count_parameters(model) / 2.5
    assert pruned(EXAMPLE).shape == (2, 10)
    assert layer_shapes(model)["features.0.0"]["out_channels"] == 8  # the input model is untouched
    kept = pruned.features[0][0].weight
    original = model.features[0][0].weight
    # every kept filter is one of the original filters, unchanged
    assert all(any(torch.equal(k, o) for o in original) for k in kept)


def test_a_frozen_model_under_no_grad_is_pruned_too():
    model = teacher().eval().requires_grad_(False)  # e.g. a KD teacher
    with torch.no_grad():
        pruned = channel_prune(model, EXAMPLE, 0.5)
    assert layer_shapes(pruned)["features.0.0"]["out_channels"] == 4
    assert all(p.requires_grad for p in pruned.parameters())  # ready to fine-tune


def test_ratio_zero_keeps_the_function():
    model = teacher().eval()
    pruned = channel_prune(model, EXAMPLE, 0.0)
    torch.testing.assert_close(pruned(EXAMPLE), model(EXAMPLE))


def test_save_and_load_a_pruned_model_through_the_original_architecture(tmp_path):
    pruned = channel_prune(teacher(), EXAMPLE, 0.5, importance="l2").eval()
    path = save_pruned(pruned, tmp_path / "pruned.safetensors")
    restored = load_pruned(teacher(), path).eval()
    assert layer_shapes(restored) == layer_shapes(pruned)
    torch.testing.assert_close(restored(EXAMPLE), pruned(EXAMPLE))


class Gate(nn.Module):
    """A custom op with its own (C, C) parameter: torch-pruning cannot know how to slice it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.eye(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,cd->bdhw", x, self.mix)


class FixedView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, stride=3)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).view(-1, 8 * 4 * 4))  # hard-coded channel count


def test_a_custom_layer_with_parameters_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), Gate(8), nn.Flatten(), nn.Linear(8 * 10 * 10, 10))
    with pytest.raises(DistillError) as err:
        channel_prune(model, EXAMPLE, 0.5)
    assert "module '1' (Gate)" in str(err.value) and "customized_pruners" in str(err.value)


def test_code_with_fixed_channel_counts_gives_an_error_not_a_wrong_model():
    with pytest.raises(DistillError, match="fixed channel counts|changed the output shape"):
        channel_prune(FixedView(), EXAMPLE, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": -0.1}, "ratio must be a fraction in [0, 1)"),
        ({"ratio": 0.5, "importance": "l3"}, "unknown importance 'l3'"),
        ({"ratio": 0.5, "ignored_layers": ["clasifier.3"]}, "Did you mean 'classifier.3'"),
    ],
)
def test_bad_requests_name_the_problem(kwargs, message):
    with pytest.raises(DistillError) as err:
        channel_prune(teacher(), EXAMPLE, **kwargs)
    assert message in str(err.value)
