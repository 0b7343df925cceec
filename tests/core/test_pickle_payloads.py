"""A pickle payload through every path where a recipe makes distill read a pickle-capable file.

Each case writes a file whose unpickling would create a marker file, names it in a recipe and runs
``distill train``: the marker must never appear, and the command must end with exit 2 and one line
saying the file needs arbitrary unpickling (not that it is corrupt). Paths: teacher/student
``weights:`` (.pt/.pth/.bin), ``yolo:<checkpoint>.pt`` (also a checkpoint that calls a model class
with its own arguments), ``hf:<folder>`` with a pickled ``pytorch_model.bin``, a pretrained
``torchvision:`` model whose weights file in torch.hub's cache was replaced, and an Ultralytics
label cache (``labels/<split>.cache``, which Ultralytics reads with ``np.load(allow_pickle=True)``).
"""

from __future__ import annotations

import copy
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from distill.cli import main
from helpers import tiny_recipe_dict

TESTS = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this creates ``marker`` (a stand-in for any code an attacker likes)."""

    def __init__(self, marker: Path, how: str = "exec") -> None:
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.marker}",))
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def helpers(relative: str) -> Any:
    spec = importlib.util.spec_from_file_location(Path(relative).stem, TESTS / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tensors_data(tmp: Path) -> dict[str, Any]:
    from safetensors.torch import save_file

    for split, n in (("train", 8), ("test", 4)):
        (tmp / "data").mkdir(exist_ok=True)
        images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8)
        save_file(
            {"images": images, "labels": torch.arange(n) % 3},
            str(tmp / "data" / f"{split}.safetensors"),
        )
    return {"name": "tensors", "root": str(tmp / "data")}


def cnn_recipe(tmp: Path, marker: Path, role: str, suffix: str, how: str) -> dict[str, Any]:
    evil = tmp / f"evil{suffix}"
    torch.save({"features.0.weight": torch.zeros(4, 1, 3, 3), "x": Payload(marker, how)}, evil)
    recipe = tiny_recipe_dict(tmp / "run", data=tensors_data(tmp))
    model = {"name": "cnn", "options": {"channels": [4, 8]}, "weights": str(evil)}
    if role == "teacher":
        recipe.update(teacher=model, distill={"terms": [{"loss": "kd"}]})
    else:
        recipe["student"] = model
    return recipe


def yolo_recipe(tmp: Path, student: str) -> dict[str, Any]:
    det = helpers("detection/det_helpers.py")
    data_yaml = det.write_squares(tmp / "squares", train=4, val=2, size=64)
    recipe = det.detection_recipe(data_yaml, tmp / "run", **{"student.name": student})
    recipe.pop("teacher"), recipe.pop("distill")
    return recipe


def yolo_checkpoint(tmp: Path, marker: Path, how: str) -> dict[str, Any]:
    pytest.importorskip("ultralytics")
    torch.save({"ema": None, "model": Payload(marker, how), "train_args": {}}, tmp / "best.pt")
    return yolo_recipe(tmp, f"yolo:{tmp / 'best.pt'}")


class CallsModel:
    """A checkpoint whose model is built by *calling* DetectionModel with the file's own config (its
    constructor, with arguments the file chose), not rebuilt from saved attributes as pickle does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        from ultralytics.nn.tasks import DetectionModel

        return (DetectionModel, (str(self.marker),))


def yolo_constructor_call(tmp: Path, marker: Path, how: str) -> dict[str, Any]:
    pytest.importorskip("ultralytics")
    marker.with_suffix(".yaml").write_text("just: a yaml\n")
    torch.save({"model": CallsModel(marker.with_suffix(".yaml"))}, tmp / "best.pt")
    return yolo_recipe(tmp, f"yolo:{tmp / 'best.pt'}")


def hf_folder(tmp: Path, marker: Path, how: str) -> dict[str, Any]:
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    text = helpers("text/text_helpers.py")
    folder = text.save_tiny_bert(tmp / "bert", layers=2)
    state: dict[str, Any] = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    state["x"] = Payload(marker, how)
    torch.save(state, folder / "pytorch_model.bin")
    text.write_reviews(tmp / "reviews", n=8)
    recipe = tiny_recipe_dict(tmp / "run", task="text_classification")
    recipe["data"] = {
        "name": "text_file",
        "root": str(tmp / "reviews"),
        "options": {"max_length": 16},
    }
    recipe["student"] = {"name": f"hf:{folder}"}
    return recipe


def label_cache(tmp: Path, marker: Path, how: str) -> dict[str, Any]:
    pytest.importorskip("ultralytics")
    import numpy as np

    recipe = yolo_recipe(tmp, "yolo:yolov8n.yaml")
    cache = {"labels": [], "hash": "", "version": "1.0.3", "x": Payload(marker, how)}
    np.save(tmp / "train.npy", np.array(cache, dtype=object), allow_pickle=True)
    (tmp / "train.npy").rename(tmp / "squares" / "labels" / "train.cache")
    return recipe


def torchvision_cache(tmp: Path, marker: Path, how: str) -> dict[str, Any]:
    """A pretrained torchvision model whose weights file sits in torch.hub's cache (TORCH_HOME)."""
    models = pytest.importorskip("torchvision.models")
    url = models.get_model_weights("resnet18").DEFAULT.url
    cache = tmp / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload(marker, how)}, cache / Path(url).name)
    recipe = tiny_recipe_dict(tmp / "run", data=tensors_data(tmp))
    recipe["student"] = {"name": "torchvision:resnet18", "options": {"pretrained": True}}
    return recipe


PATHS: dict[str, Callable[[Path, Path, str], dict[str, Any]]] = {
    "torchvision-pretrained-in-hub-cache": torchvision_cache,
    "teacher-weights-pt": lambda tmp, marker, how: cnn_recipe(tmp, marker, "teacher", ".pt", how),
    "student-weights-pth": lambda tmp, marker, how: cnn_recipe(tmp, marker, "student", ".pth", how),
    "teacher-weights-bin": lambda tmp, marker, how: cnn_recipe(tmp, marker, "teacher", ".bin", how),
    "yolo-checkpoint": yolo_checkpoint,
    "yolo-checkpoint-calls-a-model-class": yolo_constructor_call,
    "hf-folder-pytorch-model-bin": hf_folder,
    "yolo-label-cache": label_cache,
}


@pytest.mark.parametrize("how", ["exec", "system"])
@pytest.mark.parametrize("path", list(PATHS))
def test_a_pickle_payload_never_runs(path, how, tmp_path, monkeypatch, capsys):
    if path == "yolo-checkpoint-calls-a-model-class" and how == "system":
        pytest.skip("one payload: the constructor call itself")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    marker = tmp_path / "marker"
    recipe = PATHS[path](tmp_path, marker, how)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    code = main(["train", str(tmp_path / "recipe.yaml")])
    err = capsys.readouterr().err
    assert not marker.exists(), "the payload ran"
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "arbitrary unpickling" in lines[0] and "corrupt" not in lines[0], lines[0]


def test_real_ultralytics_checkpoints_load_with_their_weights(tmp_path):
    """A checkpoint as Ultralytics' trainer writes it (EMA model in half precision, training args as an
    IterableSimpleNamespace, optimizer state) and as ``strip_optimizer`` leaves ``best.pt``, for three
    YOLO families: every weight arrives, read through the allow-list."""
    pytest.importorskip("ultralytics")
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG
    from ultralytics.utils.torch_utils import strip_optimizer

    from distill.models.yolo import quiet, yolo_model

    for family in ("yolov8n", "yolo11n", "yolo26n"):
        with quiet():
            model = DetectionModel(f"{family}.yaml", nc=3, verbose=False)
            model.args = get_cfg(DEFAULT_CFG)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            last = tmp_path / f"{family}-last.pt"
            torch.save(
                {"epoch": 1, "model": None, "ema": copy.deepcopy(model).half(), "updates": 1,
                 "optimizer": optimizer.state_dict(), "train_args": vars(model.args)},
                last,
            )  # fmt: skip
            strip_optimizer(last, tmp_path / f"{family}-best.pt")
        expected = model.half().float().state_dict()
        for path in (last, tmp_path / f"{family}-best.pt"):
            loaded = yolo_model(str(path), num_classes=3).state_dict()
            assert loaded.keys() == expected.keys()
            assert all(torch.equal(loaded[k], expected[k]) for k in expected), path
