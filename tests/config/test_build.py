"""config/build: a validated recipe becomes data, models and a Distiller; teacher weights load from a
.safetensors file, a run directory or a plain .pt state dict, and nothing is ever unpickled."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from distill.config.build import build, load_weights
from distill.config.load import load_recipe
from distill.errors import ConfigError, DistillError
from distill.models import build_model
from distill.models.cnn import CNN
from distill.train.checkpoint import save_checkpoint
from helpers import tiny_recipe_dict

TEACHER = {"name": "cnn", "options": {"channels": [4, 8]}}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(
        tmp_path
    )  # relative paths such as runs/fashion_mnist-teacher resolve in tmp_path


def tiny(write_recipe, tmp_path, **extra):
    data = tiny_recipe_dict(tmp_path / "run", **extra)
    data["data"].update(train_subset=64, test_subset=32)
    return load_recipe(write_recipe(data))


def distinct_teacher(num_classes: int = 10) -> nn.Module:
    """A teacher whose weights are far from any fresh initialisation."""
    torch.manual_seed(123)
    model = build_model("cnn", num_classes=num_classes, in_channels=1, channels=[4, 8])
    with torch.no_grad():
        for i, p in enumerate(model.state_dict().values()):
            if p.is_floating_point():
                p.copy_(torch.full_like(p, 0.01 * (i + 1)))
    return model


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def assert_one_line(err: BaseException, *needles: str) -> None:
    message = str(err)
    assert message and "\n" not in message, repr(message)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def kd_terms(weights: str | None) -> dict:
    return {
        "teacher": {**TEACHER, "weights": weights},
        "distill": {
            "task_weight": 0.5,
            "terms": [{"loss": "kd", "options": {"temperature": 2.0}, "weight": 0.5}],
        },
    }


# ----------------------------------------------------------------------------- building
def test_build_tiny_scratch_recipe(write_recipe, tmp_path):
    recipe = tiny(write_recipe, tmp_path)
    built = build(recipe)
    assert len(built.train_data) == 64 and len(built.test_data) == 32
    assert built.train_data.num_classes == 10 and built.train_data.in_channels == 1
    assert isinstance(built.student, CNN) and built.teacher is None
    assert [m.out_channels for m in built.student.modules() if isinstance(m, nn.Conv2d)] == [4, 8]
    assert built.distiller.student is built.student and built.distiller.teacher is None
    assert built.distiller.terms == []
    assert built.augment is None  # no augment section in the tiny recipe
    logits = built.student(built.test_data.images[:3])
    assert logits.shape == (3, 10)


def test_build_is_seeded(write_recipe, tmp_path):
    recipe = tiny(write_recipe, tmp_path)
    first, second = build(recipe), build(recipe)
    assert_same_weights(first.student, second.student)
    assert torch.equal(first.train_data.images, second.train_data.images)


def test_build_with_teacher_weights_null_gives_fresh_teacher(write_recipe, tmp_path):
    recipe = tiny(write_recipe, tmp_path, **kd_terms(None))
    built = build(recipe)
    assert isinstance(built.teacher, CNN) and built.distiller.teacher is built.teacher
    assert [t.name for t in built.distiller.terms] == ["kd"]
    assert built.distiller.terms[0].loss.temperature == 2.0
    assert built.distiller.terms[0].weight == 0.5


def test_shipped_kd_recipe_without_trained_teacher_says_train_it_first():
    recipe = load_recipe("fashion_mnist/kd", ["data.train_subset=64", "data.test_subset=32"])
    assert (
        recipe.teacher.weights == "runs/fashion_mnist-teacher"
        and not Path(recipe.teacher.weights).exists()
    )
    with pytest.raises(ConfigError) as excinfo:
        build(recipe)
    assert_one_line(
        excinfo.value,
        "teacher weights",
        "'runs/fashion_mnist-teacher'",
        "train it first (distill train fashion_mnist/teacher)",
    )


def test_every_shipped_runs_reference_names_the_recipe_that_trains_it():
    """A shipped recipe's ``weights: runs/NAME`` is the run of the shipped recipe named NAME."""
    from distill.config.load import recipe_training, shipped_recipes

    refs = {
        line.split("weights:", 1)[1].strip()
        for r in shipped_recipes()
        for line in r.read_text().splitlines()
        if line.strip().startswith("weights: runs/")
    }
    assert refs
    for ref in refs:
        recipe = recipe_training(ref)
        assert recipe is not None, ref
        assert load_recipe(recipe).name == Path(ref).name, (ref, recipe)
    assert recipe_training("elsewhere/teacher.safetensors") is None
    assert recipe_training("runs/fashion_mnist-teacher/model.safetensors") == "fashion_mnist/teacher"


# ----------------------------------------------------------------------------- teacher weights
def test_teacher_weights_from_safetensors(write_recipe, tmp_path):
    source = distinct_teacher()
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    built = build(tiny(write_recipe, tmp_path, **kd_terms(str(path))))
    assert_same_weights(built.teacher, source)


@pytest.mark.parametrize("with_optimizer", [False, True], ids=["best", "last-with-optimizer"])
def test_teacher_weights_from_distill_checkpoint_file(write_recipe, tmp_path, with_optimizer):
    """A checkpoint file written by distill (``model.student.*``, maybe ``optim.*``) loads directly too."""
    source = distinct_teacher()
    optimizer = None
    if with_optimizer:  # a 'last' checkpoint also holds the optimizer's tensors
        optimizer = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
        source(torch.randn(2, 1, 28, 28)).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    kind = "last" if with_optimizer else "best"
    path = save_checkpoint(
        tmp_path / "ckpt", kind, nn.ModuleDict({"student": source}), {}, optimizer
    )
    built = build(tiny(write_recipe, tmp_path, **kd_terms(str(path))))
    assert_same_weights(built.teacher, source)


def test_teacher_weights_from_run_directory(write_recipe, tmp_path):
    source = distinct_teacher()
    run = tmp_path / "teacher-run"
    save_checkpoint(run / "checkpoints", "best", nn.ModuleDict({"student": source}), {"epoch": 1})
    built = build(tiny(write_recipe, tmp_path, **kd_terms(str(run))))
    assert_same_weights(built.teacher, source)


def test_teacher_weights_from_empty_directory_is_a_distill_error(write_recipe, tmp_path):
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(DistillError) as excinfo:
        build(tiny(write_recipe, tmp_path, **kd_terms(str(tmp_path / "empty-run"))))
    assert_one_line(excinfo.value, "'best' checkpoint", "empty-run")


@pytest.mark.parametrize(
    "suffix, wrap", [(".pt", None), (".pth", None), (".pt", "state_dict"), (".pth", "model")]
)
def test_teacher_weights_from_torch_save_state_dict(write_recipe, tmp_path, suffix, wrap):
    source = distinct_teacher()
    path = tmp_path / f"teacher{suffix}"
    state = source.state_dict()
    torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    built = build(tiny(write_recipe, tmp_path, **kd_terms(str(path))))
    assert_same_weights(built.teacher, source)


class _Payload:
    """Unpickling this opens (creates) the marker file: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_and_never_executed(write_recipe, tmp_path):
    # Control: the crafted file really does run code when unpickled without weights_only.
    control_marker = tmp_path / "control-marker"
    control = tmp_path / "control.pt"
    torch.save({"weight": _Payload(control_marker)}, control)
    assert not control_marker.exists()
    handle = torch.load(control, weights_only=False)["weight"]
    handle.close()
    assert control_marker.exists()

    marker = tmp_path / "pwned-marker"
    evil = tmp_path / "teacher.pt"
    torch.save({"weight": _Payload(marker)}, evil)
    assert not marker.exists()
    recipe = tiny(write_recipe, tmp_path, **kd_terms(str(evil)))
    with pytest.raises(DistillError) as excinfo:
        build(recipe)
    assert_one_line(excinfo.value, "unpickling", "teacher.pt")
    assert not marker.exists()
    # also through load_weights directly, with a .pth and a .bin suffix and a plain pickle file
    for name in ("teacher.pth", "teacher.bin"):
        path = tmp_path / name
        path.write_bytes(evil.read_bytes())
        with pytest.raises(DistillError):
            load_weights(distinct_teacher(), str(path), "teacher")
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(DistillError):
        load_weights(distinct_teacher(), str(raw), "teacher")
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "run"])
def test_weights_that_do_not_fit_raise_one_line_error(write_recipe, tmp_path, fmt):
    source = distinct_teacher(num_classes=5)
    if fmt == "safetensors":
        path = tmp_path / "t5.safetensors"
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    elif fmt == "pt":
        path = tmp_path / "t5.pt"
        torch.save(source.state_dict(), path)
    else:
        path = tmp_path / "t5-run"
        save_checkpoint(path / "checkpoints", "best", nn.ModuleDict({"student": source}), {})
    with pytest.raises(DistillError) as excinfo:
        build(tiny(write_recipe, tmp_path, **kd_terms(str(path))))
    assert_one_line(excinfo.value, "teacher weights", "do not fit", "num_classes", "classifier")


def test_unknown_weights_format_is_a_config_error(write_recipe, tmp_path):
    path = tmp_path / "teacher.onnx"
    path.write_bytes(b"not weights")
    with pytest.raises(ConfigError) as excinfo:
        build(tiny(write_recipe, tmp_path, **kd_terms(str(path))))
    assert_one_line(excinfo.value, "unknown format", ".safetensors")


def test_pt_file_holding_a_bare_tensor_is_a_distill_error(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(DistillError):
        load_weights(distinct_teacher(), str(path), "teacher")


def test_student_weights_are_loaded_too(write_recipe, tmp_path):
    source = distinct_teacher()
    path = tmp_path / "student.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    data = tiny_recipe_dict(tmp_path / "run")
    data["student"]["weights"] = str(path)
    built = build(load_recipe(write_recipe(data)))
    assert_same_weights(built.student, source)
