"""``distill list models`` names the adapters, ``distill list taps MODEL`` prints a model's module names,
and a student whose BatchNorm momentum is too slow for the run's length gets one warning line
(issue 21, item 6)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cli.test_cli import assert_one_error_line, run_cli
from distill import api
from distill.config.build import slow_batchnorm_warning
from distill.config.schema import Recipe
from distill.models import build_model
from distill.taps import FeatureTaps
from helpers import tiny_recipe_dict


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def rows(out: str) -> list[list[str]]:
    """``distill list`` printed to pytest's capture (not a terminal): tab-separated lines."""
    return [line.split("\t") for line in out.splitlines()]


def test_list_models_names_the_adapters(capsys):
    code, out, err = run_cli(capsys, "list", "models")
    assert code == 0, err
    by_name = {row[0]: "\t".join(row[1:]) for row in rows(out)}
    for adapter in (
        "torchvision:<arch>",
        "timm:<arch>",
        "hf:<folder or hub id>",
        "yolo:<yaml or .pt>",
    ):
        assert "distill list taps" in by_name[adapter], adapter
    assert "pretrained" in by_name["torchvision:<arch>"] and "cnn" in by_name


def test_list_taps_prints_module_names_that_work_as_taps(capsys):
    code, out, err = run_cli(capsys, "list", "taps", "cnn", "channels=[4,8]", "in_channels=1")
    assert code == 0, err
    table = rows(out)
    assert table[0] == ["module", "type", "params"]
    names = {row[0]: row[1] for row in table[1:]}
    assert names["features.0.0"] == "Conv2d" and "" not in names
    model = build_model("cnn", num_classes=10, in_channels=1, channels=[4, 8])
    assert [n for n, _ in model.named_modules() if n] == [row[0] for row in table[1:]]
    with FeatureTaps(model, list(names)) as taps:  # every listed name is accepted as a tap
        model(torch.zeros(2, 1, 28, 28))
    assert set(taps) == set(names)


def test_list_taps_counts_parameters(capsys):
    code, out, _ = run_cli(capsys, "list", "taps", "cnn", "channels=[4,8]", "in_channels=1")
    params = {row[0]: int(row[2]) for row in rows(out)[1:]}
    model = build_model("cnn", num_classes=10, in_channels=1, channels=[4, 8])
    assert params["features.0.0"] == sum(p.numel() for p in model.features[0][0].parameters())


def test_list_taps_of_a_torchvision_model_downloads_nothing(capsys, monkeypatch, tmp_path):
    pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    code, out, err = run_cli(capsys, "list", "taps", "torchvision:resnet18")
    assert code == 0, err
    names = [row[0] for row in rows(out)[1:]]
    assert "layer4.1.conv2" in names and "fc" in names
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize(
    "argv, needles",
    [
        (("list", "taps"), ["needs a model name", "torchvision:resnet18"]),
        (("list", "taps", "cnn", "channels"), ["'channels'", "key=value"]),
        (("list", "taps", "torchvision:resnet18", "pretrained=true"), ["random weights"]),
        (("list", "losses", "kd"), ["takes no more arguments", "'kd'"]),
        (("list", "taps", "cnnn"), ["'cnnn'"]),
    ],
)
def test_list_taps_bad_input_is_one_line(capsys, argv, needles):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert_one_error_line(err, *needles)


def _built(student: nn.Module, samples: int, **train) -> SimpleNamespace:
    raw = tiny_recipe_dict("unused")
    raw["train"].update(train)
    recipe = Recipe.model_validate(raw)
    return SimpleNamespace(recipe=recipe, student=student, train_data=list(range(samples)))


def _with_momentum(momentum: float | None) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=momentum))


def test_slow_batchnorm_warning_rule():
    # batch 64: 938 samples are 15 batches an epoch; 0.01 needs 300 batches
    line = slow_batchnorm_warning(_built(_with_momentum(0.01), 938, epochs=6))
    assert line is not None
    assert "momentum 0.01" in line and "90 batches" in line and ">= 300 batches" in line
    assert "40%" in line  # 0.99 ** 90 of the initial statistics left
    assert slow_batchnorm_warning(_built(_with_momentum(0.01), 938, epochs=20)) is None  # 300
    assert slow_batchnorm_warning(_built(_with_momentum(0.01), 938, epochs=20, max_steps=299))
    assert slow_batchnorm_warning(_built(_with_momentum(0.1), 64, epochs=1)) is None
    assert slow_batchnorm_warning(_built(_with_momentum(None), 64, epochs=1)) is None
    assert slow_batchnorm_warning(_built(nn.Linear(2, 2), 64, epochs=1)) is None


def test_short_run_of_a_slow_batchnorm_student_warns_once(capsys, tmp_path, write_recipe):
    """torchvision's MobileNetV3 keeps BatchNorm momentum 0.01: a one-batch run says so, and trains."""
    pytest.importorskip("torchvision")
    raw = tiny_recipe_dict(tmp_path / "run")
    raw["student"] = {"name": "torchvision:mobilenet_v3_small"}
    raw["data"].update(train_subset=64, test_subset=32)
    code, out, err = run_cli(capsys, "train", str(write_recipe(raw)))
    assert code == 0, err
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, out
    assert "torchvision:mobilenet_v3_small" in warnings[0] and "momentum 0.01" in warnings[0]
    assert "train for >= 300 batches" in warnings[0]
    assert "done:" in out


def test_no_warning_for_usual_batchnorm(capsys, tmp_path, write_recipe):
    code, out, err = run_cli(capsys, "train", str(write_recipe(tiny_recipe_dict(tmp_path / "run"))))
    assert code == 0, err
    assert not [line for line in out.splitlines() if line.startswith("warning:")], out


def test_model_modules_api():
    names = [row["module"] for row in api.model_modules("resnet8", num_classes=10, in_channels=1)]
    assert names[0] == "conv1" and "layer3" in names
