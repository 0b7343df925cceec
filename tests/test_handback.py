"""Image hand-back: a student saved as ``config.json`` (timm-style ``pretrained_cfg``) + safetensors,
rebuilt without the recipe with the same logits; a timm student loads in timm alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from distill.errors import DistillError
from distill.handback import handback_run
from distill.models import build_model
from distill.models.pretrained_cfg import image_config, load_image_model, save_image_model
from helpers import tiny_recipe_dict


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    from distill import api

    folder = tmp_path_factory.mktemp("image-handback")
    recipe = folder / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(folder / "run")))
    api.train(recipe)
    return folder / "run"


def test_image_student_is_rebuilt_from_its_folder_with_the_same_logits(image_run):
    from distill import open_run

    result = handback_run(image_run)
    folder = Path(result["folder"])
    assert folder == image_run / "image" and result["check"]["ok"]
    assert sorted(result["files"]) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "cnn" and config["library"] == "distill"
    assert config["model_args"] == {"in_channels": 1, "channels": [4, 8]}
    assert config["num_classes"] == 10 and config["label_names"][0] == "T-shirt/top"
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [1, 28, 28] and cfg["mean"] == [0.0] and cfg["std"] == [1.0]
    model, student = load_image_model(folder), open_run(image_run).student
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), student(x))
    assert json.loads((folder / "handback.json").read_text())["format"] == "image"


def test_handed_back_files_follow_the_umask(image_run, tmp_path):
    """safetensors writes its files private (0o600); a hand-back is for others to read."""
    import os
    import stat

    old = os.umask(0o002)
    try:
        folder = Path(handback_run(image_run, out=tmp_path / "shared")["folder"])
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes == dict.fromkeys(["config.json", "model.safetensors", "handback.json"], 0o664)


def test_bad_folders_and_formats_are_one_line_errors(image_run, tmp_path):
    with pytest.raises(DistillError, match="has no config.json"):
        load_image_model(tmp_path)
    with pytest.raises(DistillError, match="hands back as image, not hf; use --format image"):
        handback_run(image_run, format="hf")
    with pytest.raises(DistillError, match="unknown checkpoint 'bets'"):
        handback_run(image_run, checkpoint="bets")
    folder = tmp_path / "wrong"
    model = build_model("cnn", 10, 1, channels=[4, 8])
    config = image_config(model, "cnn", {"channels": [4, 16]}, 10, 1, (28, 28))
    save_image_model(model, folder, config)  # weights of another width than the config says
    with pytest.raises(DistillError, match="does not fit the model its config.json describes"):
        load_image_model(folder)


def test_timm_student_loads_in_timm_alone_with_its_normalisation(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    options = {"normalize": "always", "drop_rate": 0.0}
    student = build_model("timm:test_resnet", 4, 3, **options).eval()
    config = image_config(student, "timm:test_resnet", options, 4, 3, (32, 32), list("abcd"))
    save_image_model(student, tmp_path, config)
    cfg = config["pretrained_cfg"]
    # the statistics the student normalised its input with (its pretrained config's), not 0 and 1
    assert cfg["mean"] == pytest.approx(student.input_norm.mean.flatten().tolist())
    assert cfg["mean"] != [0.0, 0.0, 0.0]
    plain = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    rebuilt = load_image_model(tmp_path)  # with the normalisation inside, as distill ran it
    x = torch.rand(2, 3, 32, 32)
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        want = student(x)
        assert torch.allclose(plain((x - mean) / std), want, atol=1e-5)
        assert torch.allclose(rebuilt(x), want, atol=1e-5)
    assert plain.pretrained_cfg["label_names"] == list("abcd")
