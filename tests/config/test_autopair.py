"""Automatic layer pairing (student: auto / teacher: auto): the stages found in zoo, torchvision and timm
models, the pairs and projectors chosen, and that the resolved terms build and run."""

from __future__ import annotations

import pytest
import torch

from distill import api
from distill.config.autopair import feature_stages, pair_stages
from distill.config.build import build
from distill.config.schema import Recipe
from distill.data.tensor import TensorDataset
from distill.models import build_model
from helpers import fake_fashion_mnist, tiny_recipe_dict


def stage_names(name: str, size: int, in_channels: int = 3, **options) -> list[str]:
    model = build_model(name, num_classes=10, in_channels=in_channels, **options)
    x = torch.rand(2, in_channels, size, size)
    return [s.name for s in feature_stages(model, lambda m: m(x))]


def test_stages_of_zoo_torchvision_and_timm_models() -> None:
    assert stage_names("cnn", 28, 1, channels=[4, 8, 16, 32]) == [
        "features.0", "features.1", "features.3"]  # fmt: skip
    assert stage_names("torchvision:resnet18", 64) == [
        "relu",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    assert stage_names("torchvision:mobilenet_v3_small", 64) == [
        "features.0", "features.1", "features.3", "features.8", "features.12"]  # fmt: skip
    assert stage_names("resnet8x4", 32) == ["layer1", "layer2", "layer3"]
    timm = pytest.importorskip("timm", reason="timm pairs need the vision extra")
    assert timm is not None
    assert stage_names("timm:resnet18", 64) == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert stage_names("timm:mobilenetv3_small_100", 64) == [
        "bn1", "blocks.0", "blocks.1", "blocks.3", "blocks.5"]  # fmt: skip


def test_pairs_match_spatial_sizes_and_fall_back_to_relative_depth() -> None:
    from distill.config.autopair import Stage

    student = [Stage("s1", (2, 4, 14, 14)), Stage("s2", (2, 8, 7, 7)), Stage("s3", (2, 16, 3, 3))]
    teacher = [
        Stage("t0", (2, 8, 28, 28)),
        Stage("t1", (2, 16, 14, 14)),
        Stage("t3", (2, 64, 3, 3)),
    ]
    assert [(s.name, t.name) for s, t in pair_stages(student, teacher, many=True)] == [
        ("s1", "t1"), ("s3", "t3")]  # fmt: skip
    assert [(s.name, t.name) for s, t in pair_stages(student, teacher, many=False)] == [
        ("s3", "t3")
    ]
    other = [Stage("u1", (2, 8, 16, 16)), Stage("u2", (2, 8, 8, 8))]  # no common size
    # the deeper of two stages at equal relative depth (round half to even: 1.5 -> 2)
    assert [(s.name, t.name) for s, t in pair_stages(student, other, many=True)] == [
        ("s2", "u1"), ("s3", "u2")]  # fmt: skip


def auto_recipe(tmp_path, student: dict, teacher: dict, terms: list[dict]) -> Recipe:
    recipe = tiny_recipe_dict(tmp_path / "run", student=student, teacher=teacher)
    recipe["distill"] = {"terms": terms}
    return Recipe.model_validate(recipe)


def images(n: int, size: int = 32) -> TensorDataset:
    return TensorDataset(torch.rand(n, 3, size, size), torch.arange(n) % 10, num_classes=10)


AUTO = {"student": "auto", "teacher": "auto"}


def test_zoo_pair_resolves_in_distill_config_and_trains(tmp_path) -> None:
    recipe = auto_recipe(
        tmp_path,
        {"name": "cnn", "options": {"channels": [4, 8, 16, 32]}},
        {"name": "cnn", "options": {"channels": [16, 32, 64, 256]}},
        [{"loss": "fitnet", **AUTO}, {"loss": "reviewkd", **AUTO}, {"loss": "at", **AUTO}],
    )
    data = (fake_fashion_mnist(16, 0), fake_fashion_mnist(8, 1))
    built = build(recipe, data)
    fitnet, review, at = built.recipe.distill.terms
    assert (fitnet.student, fitnet.teacher, fitnet.projector) == (
        "features.3",
        "features.3",
        "conv1x1",
    )
    assert review.student == review.teacher == ["features.0", "features.1", "features.3"]
    assert review.projector is None  # its own connectors map the widths
    assert (at.student, at.teacher, at.projector) == (
        "features.3",
        "features.3",
        None,
    )  # no shape rule
    assert built.pairing[0] == (
        "distill.terms.0 (fitnet): student features.3 (32x3x3) <-> teacher features.3 (256x3x3), "
        "projector conv1x1"
    )
    raw = next(iter(data[0].loader(4)))
    built.distiller.setup(raw)
    step = built.distiller(built.distiller.task.split(raw))
    assert torch.isfinite(step.loss) and set(step.parts) == {"task", "fitnet", "reviewkd", "at"}

    shown = api.resolve(_saved(recipe, tmp_path))
    assert "# auto pairing: distill.terms.0 (fitnet): student features.3" in shown
    assert "student: auto" not in shown and "student: features.3" in shown


def _saved(recipe: Recipe, tmp_path) -> str:
    from distill.config.load import recipe_to_yaml

    path = tmp_path / "auto.yaml"
    path.write_text(recipe_to_yaml(recipe))
    return str(path)


def test_torchvision_pair_gets_the_deepest_common_stage_and_a_projector(tmp_path) -> None:
    recipe = auto_recipe(
        tmp_path,
        {"name": "torchvision:mobilenet_v3_small"},
        {"name": "torchvision:resnet18"},
        [{"loss": "fitnet", **AUTO}, {"loss": "at", **AUTO}],
    )
    built = build(recipe, (images(8), images(4)))
    fitnet, at = built.recipe.distill.terms
    # 32 x 32 inputs: both last stages are pooled to 1 x 1 and left out; 2 x 2 is the deepest common size
    assert (fitnet.student, fitnet.teacher, fitnet.projector) == ("features.8", "layer3", "conv1x1")
    assert (at.student, at.teacher) == ("features.8", "layer3")


def test_timm_pair_lists_every_common_stage_for_a_multi_level_loss(tmp_path) -> None:
    pytest.importorskip("timm", reason="timm pairs need the vision extra")
    recipe = auto_recipe(
        tmp_path,
        {"name": "timm:mobilenetv3_small_100"},
        {"name": "timm:resnet18"},
        [{"loss": "nst", **AUTO}, {"loss": "vid", **AUTO}],
    )
    built = build(recipe, (images(8), images(4)))
    nst, vid = built.recipe.distill.terms
    assert (nst.student, nst.teacher) == ("blocks.3", "layer3")
    assert vid.student == ["bn1", "blocks.0", "blocks.1", "blocks.3"]
    assert vid.teacher == ["act1", "layer1", "layer2", "layer3"]
