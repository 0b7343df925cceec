"""Pretrained preprocessing inside the model: each torchvision/timm model normalises the raw [0, 1]
batch with its own pretrained statistics (normalize: auto when pretrained, always, none), keeping its
module names and state_dict; timm's hf-hub: names parse without a download."""

from __future__ import annotations

import copy

import pytest
import torch

from distill.errors import DistillError
from distill.models import build_model, timm_hub_id
from distill.models.preprocess import InputNorm

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _normalised(model: torch.nn.Module, x: torch.Tensor, mean, std) -> torch.Tensor:
    """What the wrapped model computes: its own forward (no hooks) on the normalised input."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return model.forward((x - m) / s)


@pytest.mark.parametrize("source", ["torchvision:resnet18", "timm:resnet18"])
def test_normalize_always_applies_the_pretrained_statistics(source: str) -> None:
    pytest.importorskip(source.split(":")[0])
    torch.manual_seed(0)
    plain = build_model(source, num_classes=3, in_channels=3)
    model = build_model(source, num_classes=3, in_channels=3, normalize="always")
    assert isinstance(model.input_norm, InputNorm) and not hasattr(plain, "input_norm")
    assert model.state_dict().keys() == plain.state_dict().keys()  # checkpoints load either way
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), _normalised(model, x, *IMAGENET), atol=1e-5)
    assert not torch.allclose(model(x), model.forward(x), atol=1e-3)
    clone = copy.deepcopy(model)  # EMA and from_teacher copy models: the hook goes with them
    assert torch.allclose(clone(x), model(x))


def test_auto_leaves_random_models_alone_and_none_is_never() -> None:
    pytest.importorskip("timm")
    assert not hasattr(build_model("timm:resnet18", 3, 3), "input_norm")  # auto, not pretrained
    assert not hasattr(build_model("torchvision:resnet18", 3, 3, normalize="none"), "input_norm")
    with pytest.raises(DistillError, match=r"invalid normalize='imagenet'; expected one of auto"):
        build_model("timm:resnet18", 3, 3, normalize="imagenet")


def test_grayscale_and_resize() -> None:
    pytest.importorskip("torchvision")
    model = build_model(
        "torchvision:resnet18", num_classes=2, in_channels=1, normalize="always", resize=True
    )
    norm = model.input_norm
    assert norm.size == (224, 224) and norm.mean.shape == (1, 1, 1, 1)
    assert norm.mean.item() == pytest.approx(sum(IMAGENET[0]) / 3)
    assert norm(torch.rand(1, 1, 28, 28)).shape == (1, 1, 224, 224)


def test_timm_hub_names_parse() -> None:
    assert timm_hub_id("hf-hub:timm/resnet18.a1_in1k") == "timm/resnet18.a1_in1k"
    assert timm_hub_id("hf-hub:org/name@v1.0") == "org/name@v1.0"
    assert timm_hub_id("resnet18") is None
    for bad in ("hf-hub:", "hf-hub:no-slash", "hf-hub:a/b c"):
        with pytest.raises(DistillError, match=r"is not a hub name; use timm:hf-hub:ORG/NAME"):
            timm_hub_id(bad)


def test_a_timm_hub_name_reaches_create_model(monkeypatch: pytest.MonkeyPatch) -> None:
    timm = pytest.importorskip("timm")
    calls = []
    monkeypatch.setattr(
        timm, "create_model", lambda arch, **kw: calls.append(arch) or torch.nn.Identity()
    )
    build_model("timm:hf-hub:timm/resnet18.a1_in1k", 3, 3, normalize="none")
    assert calls == ["hf-hub:timm/resnet18.a1_in1k"]
    with pytest.raises(DistillError, match="unknown timm model 'resnet1'"):
        build_model("timm:resnet1", 3, 3)


def test_pretrained_models_normalise_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """``normalize: auto`` with ``pretrained: true``; the builders are made to skip the download."""
    timm = pytest.importorskip("timm")
    tv = pytest.importorskip("torchvision.models")
    create, get_model = timm.create_model, tv.get_model
    monkeypatch.setattr(timm, "create_model", lambda a, pretrained, **kw: create(a, **kw))
    monkeypatch.setattr(tv, "get_model", lambda a, weights, **kw: get_model(a, weights=None, **kw))
    for source in ("timm:resnet18", "torchvision:resnet18"):
        model = build_model(source, num_classes=3, in_channels=3, pretrained=True)
        assert model.input_norm.mean.flatten().tolist() == pytest.approx(IMAGENET[0]), source
        assert model.input_norm.std.flatten().tolist() == pytest.approx(IMAGENET[1]), source


def test_an_exported_model_carries_its_normalisation() -> None:
    from distill.models.preprocess import add_input_norm

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    add_input_norm(model, [0.5] * 3, [0.25] * 3, in_channels=3)
    x = torch.rand(1, 3, 2, 2)
    exported = torch.export.export(model, (x,)).module()
    assert torch.allclose(exported(x), model(x)) and not torch.allclose(
        exported(x), model.forward(x)
    )
