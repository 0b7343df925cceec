"""A catalogue of bad inputs: every mistake a user can make in a recipe, the data, the command line or
the file system must end the same way.

Each case runs the ``distill`` command in-process and checks that it

* exits with code 2,
* prints exactly one line on stderr, ``error: ...``, with no traceback,
* names the bad value and hints at the fix (the case's needles), and
* loses nothing already saved: every file that existed before (a finished run next to or under the
  recipe's output folder, the data, the recipe, teacher weights) is unchanged and still there, and no
  new file appears.

Training cases run with ``--overwrite`` into a finished run, the most dangerous setting: the error has
to come before the old run is cleared. Cases are tiny (8x8 images, 3 classes, a 2-stage CNN with 4/8
channels) so the whole catalogue runs in seconds.

To add a case, append a ``case(...)`` to the table: ``edits`` change the base recipe (dotted keys;
``DROP`` deletes), ``prepare`` writes extra files, ``argv`` replaces the default
``train $RECIPE --overwrite``. ``$TMP``, ``$DATA``, ``$SAVED`` and ``$RECIPE`` are replaced by the
case's folder, its tiny dataset, its finished run and its recipe file, in edits, argv and needles.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import shutil
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import save_file

from distill.cli import commands, err_console, main
from helpers import tiny_recipe_dict

N_TRAIN, N_TEST, NUM_CLASSES, SIZE = 24, 12, 3, 8
DROP = object()  # an edit value that deletes the key
NEEDS_OPTUNA = pytest.mark.skipif(
    importlib.util.find_spec("optuna") is None, reason="distill tune needs the tune extra (optuna)"
)


# ----------------------------------------------------------------------------- fixtures and helpers
def images(n: int, channels: int = 1, size: int = SIZE) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)


def write_tensors(
    path: Path,
    n: int = N_TRAIN,
    labels: torch.Tensor | None = None,
    metadata: dict[str, str] | None = None,
    **tensors: torch.Tensor,
) -> Path:
    """``<path>`` as the ``tensors`` dataset reads it: uint8 ``images`` [n,1,8,8], int64 ``labels``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {
        "images": images(n),
        "labels": torch.arange(n) % NUM_CLASSES if labels is None else labels,
        **tensors,
    }
    save_file({k: v for k, v in content.items() if v is not None}, str(path), metadata=metadata)
    return path


def write_dataset(root: Path) -> Path:
    write_tensors(root / "train.safetensors", N_TRAIN)
    write_tensors(root / "test.safetensors", N_TEST)
    return root


def idx_bytes(array: torch.Tensor) -> bytes:
    """An IDX file (the Fashion-MNIST format) holding a uint8 array."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.numpy().astype("uint8").tobytes()


def write_fashion_mnist(root: Path, n: int = 12, labels: torch.Tensor | None = None) -> Path:
    """All four Fashion-MNIST files, gzipped, with ``n`` random 28x28 images per split."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        pixels = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8)
        classes = torch.arange(n, dtype=torch.uint8) % 10 if labels is None else labels
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(pixels)))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(classes)))
    return root


def write_png_folder(root: Path, per_class: int = 2) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("L", (SIZE, SIZE), color=40 * i).save(folder / f"{i}.png")
    return root


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> SHA-256)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@dataclass
class Env:
    """One case's folder: ``data`` (a tiny tensors dataset), ``saved`` (a finished run), the recipe."""

    tmp: Path
    data: Path
    saved: Path
    recipe: Path

    def subst(self, value: Any) -> Any:
        if isinstance(value, str):
            for token, path in (
                ("$RECIPE", self.recipe),
                ("$SAVED", self.saved),
                ("$DATA", self.data),
                ("$TMP", self.tmp),
            ):
                value = value.replace(token, str(path))
            return value
        if isinstance(value, dict):
            return {k: self.subst(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.subst(v) for v in value)
        return value


def base_recipe(output: Path, data: Path) -> dict[str, Any]:
    recipe = tiny_recipe_dict(output, data={"name": "tensors", "root": str(data)})
    recipe["train"].update(batch_size=12, eval_batch_size=12, log_every=1)
    return recipe


def apply_edits(recipe: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    for dotted, value in edits.items():
        *parents, last = dotted.split(".")
        node = recipe
        for key in parents:
            node = node.setdefault(key, {})
        if value is DROP:
            node.pop(last, None)
        else:
            node[last] = value
    return recipe


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny dataset and a run trained on it (2 steps), copied into each case's folder."""
    root = tmp_path_factory.mktemp("template")
    data = write_dataset(root / "data")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(base_recipe(root / "saved-run", data)))
    assert main(["train", str(recipe)]) == 0
    return data, root / "saved-run"


@pytest.fixture(autouse=True)
def _fixed_console_width(monkeypatch):
    """Output must not depend on the terminal the suite happens to run in."""
    monkeypatch.setattr(commands.console, "_width", 160)
    monkeypatch.setattr(err_console, "_width", 160)


@pytest.fixture
def env(tmp_path, template, monkeypatch) -> Env:
    monkeypatch.chdir(tmp_path)
    data, saved = template
    shutil.copytree(data, tmp_path / "data")
    shutil.copytree(saved, tmp_path / "saved-run")
    return Env(tmp_path, tmp_path / "data", tmp_path / "saved-run", tmp_path / "recipe.yaml")


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Case:
    needles: tuple[str, ...]
    edits: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[[Env], Any] | None = None
    argv: tuple[str, ...] = ("train", "$RECIPE", "--overwrite")


def case(id: str, *needles: str, marks: Any = (), **kwargs: Any) -> Any:
    return pytest.param(Case(needles, **kwargs), id=id, marks=marks)


TEACHER = {"name": "cnn", "options": {"channels": [4, 8]}, "weights": "$SAVED"}
KD = {"teacher": TEACHER, "distill.terms": [{"loss": "kd", "options": {"temperature": 2.0}}]}


def with_teacher(*terms: dict[str, Any], **teacher: Any) -> dict[str, Any]:
    return {"teacher": {**TEACHER, **teacher}, "distill.terms": list(terms)}


def text_recipe(text: str) -> Callable[[Env], Any]:
    return lambda env: env.recipe.write_text(text)


def tensors_file(split: str, **kwargs: Any) -> Callable[[Env], Any]:
    return lambda env: write_tensors(env.data / f"{split}.safetensors", **kwargs)


def raw_file(relative: str, content: bytes) -> Callable[[Env], Any]:
    def write(env: Env) -> None:
        path = env.tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)

    return write


def saved_as_this_recipe(env: Env) -> None:
    """The saved run's recipe.yaml as if this case's recipe had started it (its data and output are in
    the case's folder), so that a --resume case differs from it only in its overrides."""
    from distill.config.load import load_recipe, recipe_to_yaml

    (env.saved / "recipe.yaml").write_text(recipe_to_yaml(load_recipe(env.recipe)))


def truncated_copy(source: str, target: str) -> Callable[[Env], Any]:
    def write(env: Env) -> None:
        data = (env.tmp / source).read_bytes()
        (env.tmp / target).write_bytes(data[: len(data) // 2])

    return write


def fashion_mnist(corrupt: str | None = None, content: bytes = b"", **kwargs: Any):
    def write(env: Env) -> None:
        root = write_fashion_mnist(env.tmp / "fmnist", **kwargs)
        if corrupt is not None:
            (root / corrupt).write_bytes(content)

    return write


def png_folder(*extra: tuple[str, bytes]) -> Callable[[Env], Any]:
    def write(env: Env) -> None:
        write_png_folder(env.tmp / "pics")
        for relative, content in extra:
            (env.tmp / "pics" / relative).write_bytes(content)

    return write


def teacher_file(name: str, channels: tuple[int, ...] = (4, 8), classes: int = NUM_CLASSES):
    """A state dict of a cnn with other ``channels``/``classes``, saved as ``name`` (.pt/.safetensors)."""

    def write(env: Env) -> None:
        from distill.models import build_model

        state = build_model(
            "cnn", num_classes=classes, in_channels=1, channels=list(channels)
        ).state_dict()
        if name.endswith(".safetensors"):
            save_file(state, str(env.tmp / name))
        else:
            torch.save(state, env.tmp / name)

    return write


def plugin_model(env: Env) -> None:
    """A plugin whose model (for 8x8 images) ignores num_classes and always gives 10 logits."""
    (env.tmp / "fixed_head_plugin.py").write_text(
        "from torch import nn\n"
        "from distill.models import MODELS\n\n"
        "@MODELS.register('fixed_head')\n"
        "def fixed_head(num_classes=10, in_channels=1):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 10))\n"
    )


def _helpers(folder: str) -> Any:
    """A helper module of another test folder, loaded by path: ``text`` (``text_helpers.py``: tiny BERTs
    and tokenizers) or ``detection`` (``det_helpers.py``: tiny YOLO datasets)."""
    import importlib.util

    name = {"text": "text_helpers", "detection": "det_helpers"}[folder]
    path = Path(__file__).resolve().parents[1] / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_catalogue_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text_helpers() -> Any:
    return _helpers("text")


def text_models(**models: dict[str, Any]) -> Callable[[Env], Any]:
    """Reviews (``$TMP/reviews``: text,label; labels pos/neg) and tiny BERT folders ``$TMP/<name>`` made
    with ``save_tiny_bert(**options)``; ``vocab="reversed"`` gives one another tokenizer."""

    def write(env: Env) -> None:
        import contextlib
        import io

        helpers = _text_helpers()
        helpers.write_reviews(env.tmp / "reviews", n=12)
        for name, options in models.items():
            options = dict(options)
            if options.pop("vocab", None) == "reversed":
                options["tokenizer"] = helpers.tiny_tokenizer(helpers.WORDS[::-1])
            with contextlib.redirect_stderr(io.StringIO()):  # save_pretrained's progress bar
                helpers.save_tiny_bert(env.tmp / name, **options)

    return write


def reviews_row(line: int, row: str) -> Callable[[Env], Any]:
    """Replace line ``line`` (1-based; the header is line 1) of ``$TMP/reviews/train.csv`` with ``row``."""

    def write(env: Env) -> None:
        path = env.tmp / "reviews" / "train.csv"
        lines = path.read_text().splitlines()
        lines[line - 1] = row
        path.write_text("\n".join(lines) + "\n")

    return write


def text_kd(data_options: dict[str, Any] | None = None, **models: Any) -> dict[str, Any]:
    """A text KD recipe over ``$TMP/reviews``: ``teacher``/``student`` model specs (defaults: the tiny
    BERT in ``$TMP/bert``, a 2-layer student cut from it)."""
    return {
        "task": "text_classification",
        "data": {"name": "text_file", "root": "$TMP/reviews",
                 "options": {"max_length": 16, **(data_options or {})}},
        "teacher": models.get("teacher", {"name": "hf:$TMP/bert"}),
        "student": models.get("student", {"name": "from_teacher", "options": {"layers": [0, 2]}}),
        "distill.terms": [{"loss": "kd"}],
        "train.optimizer": "adamw",
    }  # fmt: skip


def _det_helpers() -> Any:
    return _helpers("detection")


def squares(label: str | None = None, loaded: bool = False) -> Callable[[Env], Any]:
    """A 3-class YOLO dataset in ``$TMP/squares``; ``label`` replaces ``labels/train/001.txt``; ``loaded``
    builds it once with Ultralytics first, so the label caches it writes exist before the case runs."""

    def write(env: Env) -> None:
        data_yaml = _det_helpers().write_squares(env.tmp / "squares", train=4, val=2, size=64)
        if label is not None:
            (env.tmp / "squares" / "labels" / "train" / "001.txt").write_text(label)
        if loaded:
            from distill.data.detection import DetectionDataset

            for split in ("train", "test"):
                DetectionDataset(data_yaml, split, image_size=64)

    return write


def det_kd(*terms: dict[str, Any], **models: str) -> dict[str, Any]:
    """A YOLO KD recipe over ``$TMP/squares`` (YOLOv8n student, YOLO11n teacher unless given)."""
    return {
        "task": "detection",
        "data": {"name": "yolo", "root": "$TMP/squares/data.yaml",
                 "options": {"image_size": 64, "hyp": {"mosaic": 0.0}}},
        "student": {"name": models.get("student", "yolo:yolov8n.yaml")},
        "teacher": {"name": models.get("teacher", "yolo:yolo11n.yaml")},
        "distill.terms": list(terms) or [{"loss": "cwd", "student": "@p3", "teacher": "@p3"}],
        "train.optimizer": "adamw",
    }  # fmt: skip


YOLO = pytest.mark.skipif(
    importlib.util.find_spec("ultralytics") is None, reason="needs the yolo extra"
)
FM = {"data": {"name": "fashion_mnist", "root": "$TMP/fmnist", "options": {"download": False}}}
PICS = {"data": {"name": "image_folder", "root": "$TMP/pics", "options": {"grayscale": True, "image_size": SIZE}}}  # fmt: skip
FITNET = {"loss": "fitnet", "student": "features.1", "teacher": "features.1"}

CASES = [
    # --- recipes: syntax, types, unknown and missing keys ------------------------------------------
    case("yaml-syntax", "recipe.yaml", "line 3", "YAML syntax error", "fix the YAML",
         prepare=text_recipe("name: x\nstudent: {name: cnn\n")),
    case("yaml-tab-indent", "recipe.yaml", "YAML syntax error",
         prepare=text_recipe("name: x\nstudent:\n\tname: cnn\n")),
    case("yaml-not-a-mapping", "recipe.yaml", "must be a YAML mapping", "got list",
         prepare=text_recipe("- name: x\n- student: cnn\n")),
    case("recipe-not-utf8", "recipe.yaml", "UTF-8",
         prepare=lambda env: env.recipe.write_bytes(b"name: \xff\xfe\n")),
    case("yaml-duplicate-key", "recipe.yaml", "key 'train' appears twice (lines 3 and 5)", "keep one",
         prepare=text_recipe("name: x\nstudent: {name: cnn}\ntrain: {epochs: 5}\ndata: {name: tensors}\n"
                             "train: {epochs: 1}\n")),
    case("yaml-huge-flow-list", "recipe.yaml", "10000 items", "keep bulk data in a file",
         prepare=text_recipe("name: x\nstudent: {name: cnn}\ndescription: [" + "1, " * 20000 + "1]\n")),
    case("cli-override-duplicate-key", "override", "key 'channels' appears twice", "keep one",
         argv=("train", "$RECIPE", "student.options={channels: [4], channels: [8]}", "--overwrite")),
    case("type-epochs-not-int", "train.epochs", "valid integer", "'ten'", edits={"train.epochs": "ten"}),
    case("type-student-is-string", "student", "'cnn'", edits={"student": "cnn"}),
    case("type-terms-not-list", "distill.terms", "list",
         edits={"teacher": TEACHER, "distill.terms": {"loss": "kd"}}),
    case("type-channels-not-list", "channels", "'wide'", "positive ints",
         edits={"student.options.channels": "wide"}),
    case("type-lr-not-number", "train.lr", "'fast'", edits={"train.lr": "fast"}),
    case("unknown-top-level-key", "studnet", "Did you mean 'student'", edits={"studnet": {"name": "cnn"}}),
    case("unknown-train-key", "train.epoch", "Did you mean 'epochs'", edits={"train.epoch": 2}),
    case("unknown-model-option", "'chanels'", "Did you mean 'channels'",
         edits={"student.options.chanels": [4, 8]}),
    case("unknown-term-key", "wieght", "Did you mean 'weight'",
         edits=with_teacher({"loss": "kd", "wieght": 0.5})),
    case("missing-student", "student", "Field required", edits={"student": DROP}),
    case("bad-run-name", "name", "pattern", edits={"name": "my run/1"}),
    # --- export:, qat: and compare: sections (settings of the commands run after training) ---------
    case("unknown-export-key", "export.int8_mod", "Did you mean 'int8_mode'",
         edits={"export.int8_mod": "static"}, argv=("validate", "$RECIPE")),
    case("bad-export-int8-mode", "export.int8_mode", "'static' or 'dynamic'", "'fast'",
         edits={"export.int8_mode": "fast"}, argv=("validate", "$RECIPE")),
    case("bad-qat-epochs", "qat.epochs", "greater than or equal to 1", edits={"qat.epochs": 0}),
    case("unknown-compare-finetune-key", "compare.finetune", "'lrr'", "Did you mean 'lr'",
         edits={"compare.finetune": {"lrr": 0.01}}, argv=("validate", "$RECIPE")),
    # --- losses, models, datasets, tasks, projectors, schedules: unknown names and bad options -------
    case("unknown-loss", "'kdd'", "Did you mean 'kd'", edits=with_teacher({"loss": "kdd"})),
    case("unknown-loss-option", "'temprature'", "Did you mean 'temperature'",
         edits=with_teacher({"loss": "kd", "options": {"temprature": 2}})),
    case("loss-option-out-of-range", "temperature", "> 0",
         edits=with_teacher({"loss": "kd", "options": {"temperature": 0}})),
    case("loss-option-wrong-type", "'kd'", "'hot'", "fix the option values",
         edits=with_teacher({"loss": "kd", "options": {"temperature": "hot"}})),
    case("schedule-option-not-a-number", "distill.terms.0.weight", "'linear_warmup'", "'high'",
         "give numbers",
         edits=with_teacher({"loss": "kd", "weight": {"schedule": "linear_warmup", "value": "high"}})),
    case("label-smoothing-out-of-range", "label_smoothing", "1.5", "[0, 1]",
         edits={"task_options": {"label_smoothing": 1.5}}),
    case("task-input-key-unknown", "'img'", "input_key", edits={"task_options": {"input_key": "img"}}),
    case("device-unknown", "train.device", "'gpu'", "cpu, cuda", edits={"train.device": "gpu"}),
    case("device-cuda-without-gpu", "'cuda'", "no CUDA GPU", "auto or cpu", edits={"train.device": "cuda"},
         marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
    case("terms-without-teacher", "need a teacher", edits={"distill.terms": [{"loss": "kd"}]}),
    case("unknown-model", "'cnnn'", "Did you mean 'cnn'", edits={"student.name": "cnnn"}),
    case("unknown-model-source", "'torchvison'", "Did you mean 'torchvision'",
         edits={"student": {"name": "torchvison:resnet18"}}),
    case("unknown-torchvision-model", "'resnet19'", "Did you mean",
         edits={"student": {"name": "torchvision:resnet19"}}),
    case("model-num-classes-option", "num_classes", "from the data",
         edits={"student.options.num_classes": 5}),
    case("torchvision-normalize-unknown", "normalize='imagenet'", "auto, always, none",
         edits={"student": {"name": "torchvision:resnet18", "options": {"normalize": "imagenet"}}}),
    case("timm-hub-name-malformed", "'hf-hub:resnet18'", "timm:hf-hub:ORG/NAME",
         edits={"student": {"name": "timm:hf-hub:resnet18"}}),
    case("persistent-workers-without-workers", "data.persistent_workers=True", "data.num_workers",
         edits={"data.persistent_workers": True}),
    case("cifar100-labels-unknown", "labels must be 'fine' or 'coarse'", "'both'",
         edits={"data": {"name": "cifar100", "root": "$TMP", "options": {"labels": "both"}}}),
    case("unknown-dataset", "'tensor'", "Did you mean 'tensors'", edits={"data.name": "tensor"}),
    case("unknown-dataset-option", "'grayscale'", "Accepted", edits={"data.options": {"grayscale": True}}),
    case("unknown-task", "'classifcation'", "Did you mean 'classification'",
         edits={"task": "classifcation"}),
    case("unknown-projector", "'conv1x2'", "Did you mean 'conv1x1'",
         edits=with_teacher({**FITNET, "projector": "conv1x2"})),
    case("unknown-schedule", "'linear_warmpu'", "Did you mean 'linear_warmup'",
         edits=with_teacher({"loss": "kd", "weight": {"schedule": "linear_warmpu", "value": 1.0}})),
    case("plugin-not-importable", "'no_such_plugin'", "cannot be imported",
         edits={"plugins": ["no_such_plugin"]}),
    case("include-missing", "'_base.yaml'", "not found",
         edits={"defaults": ["_base.yaml"]}),
    # --- taps and shapes ---------------------------------------------------------------------------
    case("unknown-student-tap", "distill.terms.0.student", "'features.9'", "Did you mean", "features.1",
         edits=with_teacher({**FITNET, "student": "features.9"})),
    case("unknown-teacher-tap", "distill.terms.0.teacher", "'featurs.1'", "Did you mean", "features.1",
         edits=with_teacher({**FITNET, "teacher": "featurs.1"})),
    case("unknown-task-output", "'@logit'", "Did you mean 'logits'",
         edits=with_teacher({"loss": "kd", "student": "@logit"})),
    case("shape-mismatch-without-projector", "features.1", "(2, 6, 4, 4)", "(2, 8, 4, 4)",
         "add a projector", edits={**with_teacher(FITNET), "student.options.channels": [4, 6]}),
    case("loss-build-level-mismatch", "reviewkd", "2 levels", "teacher 1", "same number of levels",
         edits=with_teacher({"loss": "reviewkd", "student": ["features.0", "features.1"],
                             "teacher": ["features.1"]})),
    case("projector-wrong-rank", "'conv1x1'", "4-D", "use linear",
         edits=with_teacher({"loss": "kd", "projector": "conv1x1"})),
    case("cache-teacher-with-module-tap", "distill.cache_teacher", "'features.1'", "tap an output",
         edits={**with_teacher(FITNET), "distill.cache_teacher": True}),
    case("cache-teacher-with-augment", "distill.cache_teacher", "data.augment.flip", "turn one",
         edits={**with_teacher({"loss": "kd"}), "distill.cache_teacher": True,
                "data.augment": {"flip": True}}),
    # --- transfer sets (data.transfer) ---------------------------------------------------------------
    case("transfer-without-terms", "data.transfer", "add a teacher and terms",
         edits={"data.transfer": {"labels_per_class": 2}}),
    case("transfer-empty-section", "data.transfer", "labels_per_class", "dataset",
         edits={**with_teacher({"loss": "kd"}), "data.transfer": {}}),
    case("transfer-loss-reads-labels", "'dkd'", "labels", "kd",
         edits={**with_teacher({"loss": "dkd"}), "data.transfer": {"labels_per_class": 2}}),
    case("transfer-more-labels-than-a-class-has", "labels_per_class=9", "use at most 8",
         edits={**with_teacher({"loss": "kd"}), "data.transfer": {"labels_per_class": 9}}),
    case("transfer-every-sample-labelled", "labels_per_class=8", "no transfer set",
         edits={**with_teacher({"loss": "kd"}), "data.transfer": {"labels_per_class": 8}}),
    case("transfer-dataset-other-image-size", "data.transfer.dataset", "[1, 10, 10]", "[1, 8, 8]",
         "same image size",
         edits={**with_teacher({"loss": "kd"}),
                "data.transfer": {"labels_per_class": 2, "dataset": {"name": "tensors", "root": "$TMP/other"}}},
         prepare=lambda env: write_tensors(env.tmp / "other" / "train.safetensors", images=images(N_TRAIN, size=10))),
    case("auto-pairing-logit-loss", "auto pairs feature maps", "'kd'", "@logits",
         edits=with_teacher({"loss": "kd", "student": "auto", "teacher": "auto"})),
    case("auto-pairing-one-side", "student: auto and teacher: auto", "'features.1'",
         edits=with_teacher({**FITNET, "student": "auto"})),
    # --- distill tune (the tune: section) and data.validation ----------------------------------------
    case("tune-without-section", "has no 'tune:' section", "params", argv=("tune", "$RECIPE")),
    case("tune-path-outside-the-run", "'name'", "train.lr", argv=("tune", "$RECIPE"),
         edits={"tune": {"params": [{"path": "name.x", "low": 0, "high": 1}]}}),
    case("tune-low-not-below-high", "low 0.5 and high 0.1", "low < high", argv=("tune", "$RECIPE"),
         edits={"tune": {"params": [{"path": "train.lr", "low": 0.5, "high": 0.1}]}}),
    case("tune-log-from-zero", "log: true needs low > 0", argv=("tune", "$RECIPE"),
         edits={"tune": {"params": [{"path": "train.lr", "low": 0, "high": 1, "log": True}]}}),
    case("tune-range-and-choices", "train.lr", "not both", argv=("tune", "$RECIPE"),
         edits={"tune": {"params": [{"path": "train.lr", "low": 0.1, "high": 1, "choices": [1]}]}}),
    case("tune-path-twice", "'train.lr' is searched twice", argv=("tune", "$RECIPE"),
         edits={"tune": {"params": [{"path": "train.lr", "choices": [0.1]},
                                    {"path": "train.lr", "choices": [0.2]}]}}),
    case("tune-path-typo", "path train.lrr", "bad recipe", "Did you mean", argv=("tune", "$RECIPE"),
         edits={"tune": {"params": [{"path": "train.lrr", "low": 0.1, "high": 1}]}}, marks=NEEDS_OPTUNA),
    case("tune-value-refused", "train.batch_size", "value 0", "greater than 0", argv=("tune", "$RECIPE"),
         edits={"tune": {"params": [{"path": "train.batch_size", "low": 0, "high": 8, "integer": True}]}},
         marks=NEEDS_OPTUNA),
    case("tune-path-adds-a-key", "'student.options.dropout'", "not a value of the recipe",
         argv=("tune", "$RECIPE"), marks=NEEDS_OPTUNA,
         edits={"tune": {"params": [{"path": "student.options.dropout", "choices": [0.1]}]}}),
    case("validation-larger-than-train", "data.validation=30", "no training samples",
         edits={"data.validation": 30}),
    case("transfer-fraction-one", "labelled_fraction", "less than 1",
         edits={**with_teacher({"loss": "kd"}),
                "data.transfer": {"labels_per_class": 2, "labelled_fraction": 1.0}}),
    case("cache-teacher-with-mixup", "distill.cache_teacher", "mixup/cutmix", "not the blend",
         "set data.augment.mixup and cutmix to 0",
         edits={**with_teacher({"loss": "kd"}), "distill.cache_teacher": True, "distill.cache_views": 4,
                "data.augment": {"flip": True, "mixup": 0.2}}),
    case("cache-views-without-augment", "distill.cache_views=4", "data.augment is off", "remove cache_views",
         edits={**with_teacher({"loss": "kd"}), "distill.cache_teacher": True, "distill.cache_views": 4}),
    case("transfer-with-mixup", "data.transfer", "mixup/cutmix", "set data.augment.mixup and cutmix to 0",
         edits={**with_teacher({"loss": "kd"}), "data.transfer": {"labels_per_class": 2},
                "data.augment": {"mixup": 0.2}}),
    case("mixup-with-a-label-loss", "'dkd'", "hard labels", "set mixup and cutmix to 0",
         edits={**with_teacher({"loss": "dkd"}), "data.augment": {"mixup": 0.2}}),
    case("randaugment-magnitude-too-high", "data.augment.randaugment_magnitude", "less than or equal to 10",
         edits={"data.augment": {"randaugment": 2, "randaugment_magnitude": 30}}),
    case("cache-topk-without-views", "distill.cache_topk=2", "cache_views is 0", "remove cache_topk",
         edits={**with_teacher({"loss": "kd"}), "distill.cache_teacher": True, "distill.cache_topk": 2}),
    case("data-mode-on-images", "distill.data_mode", "task: causal_lm", "'classification'",
         "remove data_mode", edits={**with_teacher({"loss": "kd"}), "distill.data_mode": {"mode": "on_policy"}}),
    case("data-mode-lam-for-teacher-forced", "distill.data_mode", "lam=0.5", "on_policy or replay",
         "not teacher_forced", "remove lam",
         edits={"task": "causal_lm", "distill.data_mode": {"mode": "teacher_forced", "lam": 0.5}}),
    case("data-mode-replay-size-for-on-policy", "distill.data_mode", "replay_size=64", "mode replay",
         "not on_policy", "set mode: replay",
         edits={"task": "causal_lm", "distill.data_mode": {"mode": "on_policy", "replay_size": 64}}),
    case("data-mode-generated-with-topk-tap", "distill.terms.0 taps @topk", "on_policy", "tap @logits",
         "teacher_forced", argv=("validate", "$RECIPE"),
         edits={**with_teacher({"loss": "topk_kl", "teacher": "@topk"}), "task": "causal_lm",
                "distill.topk_cache": {"dir": "$TMP/cache"}, "distill.data_mode": {"mode": "on_policy"}}),
    case("data-mode-temperature-tiny", "distill.data_mode.temperature", "greater than or equal to 0.0001",
         "1e-300", edits={"task": "causal_lm",
                          "distill.data_mode": {"mode": "on_policy", "temperature": 1e-300}}),
    case("topk-cache-capture-temperature-huge", "distill.topk_cache.capture_temperature",
         "less than or equal to 10000", edits={"task": "causal_lm",
         "distill.topk_cache": {"dir": "$TMP/cache", "capture_temperature": 1e300}}),
    # --- negative or zero sizes ----------------------------------------------------------------------
    case("batch-size-zero", "train.batch_size", "greater than 0", edits={"train.batch_size": 0}),
    case("epochs-negative", "train.epochs", "greater than 0", edits={"train.epochs": -1}),
    case("lr-negative", "train.lr", "greater than 0", edits={"train.lr": -0.1}),
    case("warmup-bias-lr-without-warmup", "train", "warmup_bias_lr=0.1", "warmup_epochs is 0",
         "set warmup_epochs", edits={"train.warmup_bias_lr": 0.1, "train.warmup_epochs": 0}),
    case("epoch-schedule-with-onecycle", "train", "'onecycle'", "use schedule: cosine",
         edits={"train.schedule": "onecycle", "train.schedule_unit": "epoch"}),
    case("group-by-length-on-images", "group_by_length", "got TensorDataset",
         "set train.group_by_length: false", edits={"train.group_by_length": True}),
    case("max-steps-zero", "train.max_steps", "greater than 0", edits={"train.max_steps": 0}),
    case("grad-accum-does-not-split-batch", "train", "grad_accum_steps=3",
         "use a batch_size that is a multiple",
         edits={"train.batch_size": 8, "train.grad_accum_steps": 3}),
    case("bf16-with-fp16", "train", "bf16: true and precision: fp16", "drop bf16",
         edits={"train.bf16": True, "train.precision": "fp16"}),
    case("unknown-precision", "train.precision", "'fp8'", "fp16",
         edits={"train.precision": "fp8"}),
    case("train-subset-zero", "data.train_subset", "greater than 0", edits={"data.train_subset": 0}),
    case("crop-padding-negative", "crop_padding", "greater than or equal to 0",
         edits={"data.augment": {"crop_padding": -2}}),
    case("channels-zero", "student", "channels", "[0, 8]", "positive ints", edits={"student.options.channels": [0, 8]}),
    case("mlp-hidden-negative", "hidden", "[-4]", "positive ints",
         edits={"student": {"name": "mlp", "options": {"image_size": SIZE, "hidden": [-4]}}}),
    case("image-size-zero", "image_size", "positive",
         edits={**PICS, "data.options.image_size": 0}, prepare=png_folder()),
    case("dropout-out-of-range", "dropout=1.5", "0 <= dropout < 1", edits={"student.options.dropout": 1.5}),
    # --- models that do not fit the data or each other ------------------------------------------------
    case("mlp-for-other-image-size", "student", "mlp", "[N, 1, 28, 28]", "image_size=[8, 8]",
         edits={"student": {"name": "mlp", "options": {"hidden": [8]}}}),
    case("model-ignores-num-classes", "fixed_head", "10", "3 classes",
         edits={"student": {"name": "fixed_head"}, "plugins": ["fixed_head_plugin"]},
         prepare=plugin_model),
    case("teacher-ignores-num-classes", "teacher 'fixed_head'", "10", "3 classes",
         edits={**with_teacher({"loss": "kd"}, name="fixed_head", options={}, weights=None),
                "plugins": ["fixed_head_plugin"]},
         prepare=plugin_model),
    case("teacher-weights-missing", "no/such/teacher.safetensors", "not found",
         edits=with_teacher({"loss": "kd"}, weights="no/such/teacher.safetensors")),
    case("teacher-weights-other-classes", "teacher weights", "num_classes",
         edits=with_teacher({"loss": "kd"}, weights="$TMP/t10.safetensors"),
         prepare=teacher_file("t10.safetensors", classes=10)),
    case("teacher-weights-other-model", "teacher weights", "do not fit",
         edits=with_teacher({"loss": "kd"}, weights="$TMP/wide.pt"),
         prepare=teacher_file("wide.pt", channels=(8, 16))),
    case("teacher-weights-corrupt-safetensors", "teacher.safetensors", "re-save",
         edits=with_teacher({"loss": "kd"}, weights="$TMP/teacher.safetensors"),
         prepare=raw_file("teacher.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")),
    case("teacher-weights-truncated-safetensors", "teacher.safetensors", "re-save",
         edits=with_teacher({"loss": "kd"}, weights="$TMP/teacher.safetensors"),
         prepare=lambda env: [teacher_file("full.safetensors")(env),
                              truncated_copy("full.safetensors", "teacher.safetensors")(env)]),
    case("teacher-weights-corrupt-pt", "teacher.pt", "corrupt", "re-save",
         edits=with_teacher({"loss": "kd"}, weights="$TMP/teacher.pt"),
         prepare=raw_file("teacher.pt", b"PK\x03\x04 this is not a zip archive")),
    case("teacher-weights-unknown-format", "teacher.ckpt", "unknown format",
         edits=with_teacher({"loss": "kd"}, weights="$TMP/teacher.ckpt"),
         prepare=raw_file("teacher.ckpt", b"weights")),
    case("teacher-weights-empty-run-dir", "teacher weights", "empty-run", "no 'best' checkpoint", "train first",
         edits=with_teacher({"loss": "kd"}, weights="$TMP/empty-run"),
         prepare=lambda env: (env.tmp / "empty-run").mkdir()),
    # --- data: empty, labels, class counts, corrupt files ----------------------------------------------
    case("data-root-missing", "no-such-folder", "does not exist", edits={"data.root": "$TMP/no-such-folder"}),
    case("data-root-not-given", "needs root=", edits={"data.root": None}),
    case("empty-dataset", "empty", "0 images",
         prepare=tensors_file("train", n=0, labels=torch.zeros(0, dtype=torch.int64))),
    case("label-out-of-range", "label 7", "3 classes", "[0, 3)",
         prepare=tensors_file("train", labels=torch.tensor([7] + [0] * (N_TRAIN - 1)),
                              metadata={"num_classes": "3"})),
    case("label-negative", "label -1", "[0, 3)",
         prepare=tensors_file("train", labels=torch.tensor([-1] + [0, 1, 2] * 7 + [0, 1]))),
    case("labels-not-integers", "'tensors/train'", "must be integer", ".long()",
         prepare=tensors_file("train", labels=torch.zeros(N_TRAIN))),
    case("class-names-fewer-than-labels", "label 2", "2 classes",
         prepare=tensors_file("train", metadata={"classes": '["cat", "dog"]'})),
    case("class-count-differs-between-splits", "train", "test", "3", "5", "classes",
         prepare=lambda env: (tensors_file("train", metadata={"num_classes": "3"})(env),
                              tensors_file("test", n=N_TEST, metadata={"num_classes": "5"})(env))),
    case("image-size-differs-between-splits", "8x8", "10x10", "same size",
         prepare=tensors_file("test", n=N_TEST, images=images(N_TEST, size=10))),
    case("images-without-channel-layout", "4-D", "[N,C,H,W]",
         prepare=tensors_file("train", images=torch.zeros(N_TRAIN, 2, 8, 8, 1))),
    case("tensors-missing-labels", "train.safetensors", "lacks", "labels",
         prepare=lambda env: save_file({"images": images(4)}, str(env.data / "train.safetensors"))),
    case("tensors-corrupt", "train.safetensors", "cannot read", "re-save",
         prepare=raw_file("data/train.safetensors", b"garbage, not safetensors")),
    case("tensors-truncated", "test.safetensors", "cannot read", "re-save",
         prepare=truncated_copy("data/test.safetensors", "data/test.safetensors")),
    case("fashion-mnist-not-gzip", "train-images-idx3-ubyte.gz", "cannot read IDX", "fetch it again",
         edits=FM, prepare=fashion_mnist("train-images-idx3-ubyte.gz", b"not gzip at all")),
    case("fashion-mnist-bad-magic", "t10k-labels-idx1-ubyte.gz", "not an IDX file", "fetch it again",
         edits=FM, prepare=fashion_mnist("t10k-labels-idx1-ubyte.gz", gzip.compress(b"\x08\x00\x00\x01junk"))),
    case("fashion-mnist-truncated", "train-labels-idx1-ubyte.gz", "truncated", "fetch it again",
         edits=FM, prepare=fashion_mnist("train-labels-idx1-ubyte.gz",
                                         gzip.compress(idx_bytes(torch.zeros(12, dtype=torch.uint8))[:-3]))),
    case("fashion-mnist-label-out-of-range", "label 12", "10 classes",
         edits=FM, prepare=fashion_mnist(labels=torch.full((12,), 12, dtype=torch.uint8))),
    case("fashion-mnist-root-missing", "Fashion-MNIST root $TMP/fmnist does not exist", "--ensure --root",
         "leave root unset", edits=FM),
    case("fashion-mnist-root-holds-other-files", "$TMP/fmnist lacks", "it holds notes.txt", "leave root unset",
         edits=FM, prepare=raw_file("fmnist/notes.txt", b"not Fashion-MNIST")),
    case("image-folder-corrupt-image", "broken.png", "fix or delete",
         edits=PICS, prepare=png_folder(("train/cat/broken.png", b"\x89PNG but not really"))),
    case("image-folder-empty-split", "no images found", "expected layout",
         edits=PICS, prepare=lambda env: [
             png_folder()(env), *(p.unlink() for p in (env.tmp / "pics/test").rglob("*.png"))]),
    case("image-folder-missing-split", "pics/test", "does not exist",
         edits=PICS, prepare=lambda env: [png_folder()(env), shutil.rmtree(env.tmp / "pics/test")]),
    # --- command line --------------------------------------------------------------------------------
    case("cli-unknown-command", "'trian'", "Did you mean 'train'", "--help", argv=("trian", "$RECIPE")),
    case("cli-unknown-option", "--resum", "--resume", argv=("train", "$RECIPE", "--resum")),
    case("cli-missing-argument", "'recipe'", "distill train --help", argv=("train",)),
    case("cli-resume-and-overwrite", "--resume", "--overwrite", "not both",
         argv=("train", "$RECIPE", "--resume", "--overwrite")),
    case("resume-changed-architecture", "student.options.channels", "cannot resume", "undo the change",
         argv=("train", "$RECIPE", "student.options.channels=[4,16]", "--resume"),
         prepare=saved_as_this_recipe),
    case("resume-changed-batch-size", "train.batch_size (12 -> 6)", "cannot resume",
         argv=("train", "$RECIPE", "train.batch_size=6", "--resume"), prepare=saved_as_this_recipe),
    case("resume-nothing-there", "nothing to resume in $TMP/typo", "output=",
         argv=("train", "$RECIPE", "output=$TMP/typo", "--resume")),
    case("cli-override-without-equals", "'train.epochs'", "key=value",
         argv=("train", "$RECIPE", "train.epochs", "--overwrite")),
    case("cli-override-bad-value", "train.epochs", "'many'",
         argv=("train", "$RECIPE", "train.epochs=many", "--overwrite")),
    case("cli-override-unknown-key", "train.lrr", "Did you mean 'lr'",
         argv=("train", "$RECIPE", "train.lrr=0.1", "--overwrite")),
    case("cli-override-index-out-of-range", "index 3", "out of range",
         argv=("train", "$RECIPE", "distill.terms.3.weight=1", "--overwrite"), edits=KD),
    case("cli-list-unknown", "'lossez'", "Did you mean 'losses'", argv=("list", "lossez")),
    case("cli-eval-checkpoint-typo", "'bets'", "Did you mean 'best'", "best or last",
         argv=("eval", "$SAVED", "--checkpoint", "bets")),
    case("cli-config-bad-override", "train.epoch:", "Did you mean 'epochs'",
         argv=("config", "$RECIPE", "train.epoch=3")),
    case("cli-export-unknown-format", "'tflite'", "Supported: onnx",
         argv=("export", "$SAVED", "--format", "tflite")),
    case("cli-export-checkpoint-typo", "'bets'", "Did you mean 'best'", "best or last",
         argv=("export", "$SAVED", "--checkpoint", "bets")),
    case("export-missing-run", "no-such-run", "not a distill run directory",
         argv=("export", "no-such-run")),
    case("cli-compare-pipeline-typo", "'teachr-int8'", "Did you mean 'teacher-int8'",
         argv=("compare", "$RECIPE", "--pipelines", "student-kd,teachr-int8", "--tiny",
               "--out", "$TMP/cmp")),
    case("compare-recipe-without-kd", "needs a KD recipe", "fashion_mnist/kd",
         argv=("compare", "fashion_mnist/scratch", "--tiny", "--out", "$TMP/cmp")),
    case("compare-teacher-weights-missing", "'/no/such.safetensors'", "--teacher-recipe",
         argv=("compare", "fashion_mnist/kd", "teacher.weights=/no/such.safetensors",
               "--pipelines", "student-kd", "--tiny", "--out", "$TMP/cmp")),
    case("cli-compare-latency-repeats-zero", "latency_repeats", "0", "int >= 1",
         argv=("compare", "$RECIPE", "--latency-repeats", "0", "--tiny", "--out", "$TMP/cmp")),
    case("export-out-is-the-run", "--out $SAVED", "would replace the run folder", "leave --out unset",
         argv=("export", "$SAVED", "--out", "$SAVED")),
    case("export-out-holds-the-run", "--out $TMP", "would replace the run folder",
         argv=("export", "$SAVED", "--out", "$TMP")),
    case("export-out-holds-other-files", "--out $TMP/data", "holds other files", "train.safetensors",
         "a new or empty folder", argv=("export", "$SAVED", "--out", "$TMP/data")),
    case("handback-out-is-the-run", "--out $SAVED", "would replace the run folder",
         argv=("handback", "$SAVED", "--out", "$SAVED")),
    case("handback-out-holds-other-files", "--out $TMP/data", "holds other files", "train.safetensors",
         argv=("handback", "$SAVED", "--out", "$TMP/data")),
    case("export-budget-nan", "budget must be >= 0 points", "nan",
         argv=("export", "$SAVED", "--select", "--budget", "nan")),
    case("bench-onnx-with-executorch", "m.onnx", "not an ExecuTorch .pte program",
         "--runtime onnxruntime or openvino", prepare=raw_file("m.onnx", b"not onnx"),
         argv=("bench", "$TMP/m.onnx", "--runtime", "executorch")),
    case("bench-pte-with-onnxruntime", "m.pte", "an ExecuTorch program", "--runtime executorch",
         prepare=raw_file("m.pte", b"not a program"), argv=("bench", "$TMP/m.pte")),
    case("bench-a-folder", "$SAVED is a folder", "student.onnx", argv=("bench", "$SAVED")),
    case("bench-out-a-folder", "--out $SAVED is a folder", "bench.json",
         prepare=raw_file("m.onnx", b"not onnx"), argv=("bench", "$TMP/m.onnx", "--out", "$SAVED")),
    case("cli-export-int8-mode-typo", "'statik'", "Did you mean 'static'", "static or dynamic",
         argv=("export", "$SAVED", "--int8", "--int8-mode", "statik")),
    # --- text: tokenizers, layers, columns, label heads ---------------------------------------------
    case("text-tokenizers-differ", "'hf:$TMP/bert'", "'hf:$TMP/other'", "different tokenizers or "
         "vocabularies", "same token ids", "from_teacher",
         edits=text_kd(student={"name": "hf:$TMP/other"}),
         prepare=text_models(bert={"layers": 3}, other={"layers": 2, "vocab": "reversed"})),
    case("hf-folder-missing", "hf:$TMP/no-such-model", "there is no folder", "fix the path",
         edits=text_kd(teacher={"name": "hf:$TMP/no-such-model"}), prepare=text_models()),
    case("text-layer-out-of-range", "from_teacher", "layer 3 is out of range", "3 layers", "0..2",
         edits=text_kd(student={"name": "from_teacher", "options": {"layers": [0, 3]}}),
         prepare=text_models(bert={"layers": 3})),
    case("text-column-missing", "no column 'review'", "'text', 'label'", "set text_column",
         edits=text_kd({"text_column": "review"}), prepare=text_models(bert={"layers": 3})),
    case("text-label-column-missing", "no column 'stars'", "set label_column",
         edits=text_kd({"label_column": "stars"}), prepare=text_models(bert={"layers": 3})),
    case("text-cache-teacher-per-token-taps", "distill.cache_teacher", "'@hidden_states.*'", "per-token",
         "@logits", "turn cache_teacher off",
         edits={**text_kd(), "distill.cache_teacher": True, "train.group_by_length": True,
                "distill.terms": [{"loss": "hidden_mse", "student": "@hidden_states.*",
                                   "teacher": "@hidden_states.*"}]},
         prepare=text_models(bert={"layers": 3})),
    case("text-label-empty", "reviews/train.csv:3", "no label in column 'label'", "fill it in or drop the row",
         edits=text_kd(), prepare=lambda env: [text_models(bert={"layers": 3})(env),
                                               reviews_row(3, "the film was bad,")(env)]),
    case("text-label-column-cut-short", "reviews/train.csv:4", "no label in column 'label'",
         edits=text_kd(), prepare=lambda env: [text_models(bert={"layers": 3})(env),
                                               reviews_row(4, "the film was good")(env)]),
    case("text-labels-differ-from-teacher-head", "hf:$TMP/bert", "head for 3 labels",
         "the data has 2 classes",
         edits=text_kd(), prepare=text_models(bert={"layers": 3, "num_labels": 3})),
    # --- detection: labels, taps, shapes, heads ------------------------------------------------------
    case("det-label-class-out-of-range", "001.txt:1", "class 7", "[0, 3)", "use a class id 0..2",
         edits=det_kd(), prepare=squares("7 0.5 0.5 0.2 0.2\n"), marks=YOLO),
    case("det-label-four-numbers", "001.txt:1", "4 values", "class cx cy w h",
         edits=det_kd(), prepare=squares("0 0.5 0.5 0.2\n"), marks=YOLO),
    case("det-label-outside-image", "001.txt:1", "cx = 1.5", "outside [0, 1]", "normalise",
         edits=det_kd(), prepare=squares("0 1.5 0.5 0.2 0.2\n"), marks=YOLO),
    case("det-tap-no-such-layer", "'model.99'", "distill.terms.0.student",
         edits=det_kd({"loss": "fitnet", "student": "model.99", "teacher": "model.3"}),
         prepare=squares(loaded=True), marks=YOLO),
    case("det-maps-cannot-pair", "'@p3'", "(2, 64, 8, 8)", "(2, 128, 8, 8)", "add a projector",
         edits=det_kd({"loss": "fitnet", "student": "@p3", "teacher": "@p3"},
                      teacher="yolo:yolov8s.yaml"),
         prepare=squares(loaded=True), marks=YOLO),
    case("det-ld-on-yolo26", "term 'ld'", "reg_max", "score_kd",
         edits=det_kd({"loss": "ld", "student": "@boxes", "teacher": "@boxes"},
                      student="yolo:yolo26n.yaml", teacher="yolo:yolo26n.yaml"),
         prepare=squares(loaded=True), marks=YOLO),
    case("det-hyp-typo", "'mosiac'", "Did you mean 'mosaic'",
         edits={**det_kd(), "data.options": {"image_size": 64, "hyp": {"mosiac": 0.0}}},
         prepare=squares(), marks=YOLO),
    case("det-model-yaml-typo", "yolov99n", "no such model yaml", "yolov8n.yaml",
         edits=det_kd(student="yolo:yolov99n.yaml"), prepare=squares(loaded=True), marks=YOLO),
    # --- file system ---------------------------------------------------------------------------------
    case("recipe-missing", "'nope.yaml'", "not found", argv=("train", "nope.yaml")),
    case("recipe-is-a-directory", "'saved-run'", "not found", argv=("validate", "saved-run")),
    case("train-over-saved-run", "already holds checkpoints", "--resume", "--overwrite",
         argv=("train", "$RECIPE")),
    case("output-parent-is-a-file", "afile", "cannot create run directory", "output=",
         edits={"output": "$TMP/afile/run"}, prepare=raw_file("afile", b"I am a file")),
    case("eval-of-a-runs-model-file", "saved-run/model.safetensors", "give the run folder: $SAVED",
         argv=("eval", "$SAVED/model.safetensors")),
    case("handback-of-a-runs-checkpoint-file", "give the run folder: $SAVED",
         argv=("handback", "$SAVED/checkpoints/manifest.json")),
    case("export-of-a-runs-recipe-file", "saved-run/recipe.yaml", "give the run folder: $SAVED",
         argv=("export", "$SAVED/recipe.yaml")),
    # output=. next to one's own recipe.yaml: the run would have replaced it (and later deleted it)
    case("output-holds-the-users-recipe-yaml", "$TMP holds recipe.yaml", "no distill run wrote",
         "output=", edits={"output": "$TMP"}),
    case("output-holds-the-users-recipe-yaml-no-flag", "$TMP holds recipe.yaml", "no distill run wrote",
         edits={"output": "$TMP"}, argv=("train", "$RECIPE")),
    case("output-holds-the-users-recipe-yaml-resume", "$TMP holds recipe.yaml", "no distill run wrote",
         edits={"output": "$TMP"}, argv=("train", "$RECIPE", "--resume")),
    case("output-is-a-dangling-link", "$TMP/gone", "is a link to", "does not exist", "output=",
         edits={"output": "$TMP/gone"}, prepare=lambda env: (env.tmp / "gone").symlink_to("nowhere")),
    case("output-is-a-file", "afile", "cannot create run directory", "output=",
         edits={"output": "$TMP/afile"}, prepare=raw_file("afile", b"I am a file")),
    case("eval-missing-run", "no-such-run", "not a distill run directory", argv=("eval", "no-such-run")),
    case("eval-run-without-checkpoints", "no 'best' checkpoint", "train first",
         argv=("eval", "$TMP/half-run"),
         prepare=lambda env: [(env.tmp / "half-run").mkdir(),
                              shutil.copy(env.saved / "recipe.yaml", env.tmp / "half-run")]),
    case("validate-missing-file", "'missing.yaml'", "not found", argv=("validate", "missing.yaml")),
    case("unreadable-recipe", "recipe.yaml", "cannot read", "Permission denied",
         prepare=lambda env: env.recipe.chmod(0),
         marks=pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without permission")),
    # --- numbers and sizes beyond what the machine can hold; devices the build lacks ----------------------
    case("device-mps-missing", "train.device", "'mps'", "auto or cpu", edits={"train.device": "mps"},
         marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")),
    case("channels-beyond-memory", "student", "channels", "memory", "smaller",
         edits={"student.options.channels": [10**12, 8]}),
    case("crop-padding-beyond-memory", "data.augment.crop_padding", "memory", "smaller",
         edits={"data.augment": {"crop_padding": 10**9}}),
    case("lr-overflows", "train.lr", "1e+300", "less than or equal", edits={"train.lr": 1e300}),
    case("temperature-tiny", "temperature", "1e-300", edits=with_teacher({"loss": "kd", "options": {"temperature": 1e-300}})),
    case("temperature-huge", "temperature", "1e+300", edits=with_teacher({"loss": "kd", "options": {"temperature": 1e300}})),
    case("seed-beyond-64-bits", "train.seed", "less than or equal", edits={"train.seed": 99999999999999999999999}),
    case("batch-size-beyond-64-bits", "train.batch_size", "less than or equal",
         edits={"train.batch_size": 99999999999999999999999}),
    case("output-name-too-long", "output", "too long", "shorter", edits={"output": "$TMP/" + "x" * 300}),
    # --- optimizer, parameter groups and callbacks ----------------------------------------------------
    case("optimizer-option-it-ignores", "beta2=0.99", "does not apply", "'sgd'",
         edits={"train.optimizer": "sgd", "train.beta2": 0.99}),
    case("param-group-unknown-prefix", "'student.bogus'", "no trainable parameter",
         edits={"train.param_groups": [{"prefix": "student.bogus", "lr_scale": 0.1}]}),
    case("param-group-unknown-key", "train.param_groups", "lr",
         edits={"train.param_groups": [{"prefix": "student", "lr": 0.1}]}),
    case("callback-unknown", "'early_stoping'", "Did you mean 'early_stopping'",
         edits={"train.callbacks": [{"name": "early_stoping"}]}),
    case("callback-bad-patience", "patience 0", ">= 1",
         edits={"train.callbacks": [{"name": "early_stopping", "options": {"patience": 0}}]}),
    # --- experiment tracking (train.loggers) ----------------------------------------------------------
    case("logger-unknown", "'csvv'", "Did you mean 'csv'", edits={"train.loggers": ["jsonl", "csvv"]}),
    case("logger-twice", "'csv'", "twice", edits={"train.loggers": ["csv", "csv"]}),
    case("logger-unknown-option", "'uri'", "Did you mean 'tracking_uri'",
         edits={"train.loggers": [{"name": "mlflow", "options": {"uri": "file:/tmp/x"}}]}),
    case("eval-recipe-no-longer-fits-weights", "saved-run", "recipe.yaml", "do not fit", "channels",
         argv=("eval", "$SAVED"),
         prepare=lambda env: (env.saved / "recipe.yaml").write_text(
             (env.saved / "recipe.yaml").read_text().replace("- 8", "- 16"))),
    # --- a file or folder where the other is expected ----------------------------------------------------
    case("teacher-weights-checkpoints-folder", "$SAVED/checkpoints", "checkpoints folder",
         "give the run folder $SAVED",
         edits=with_teacher({"loss": "kd"}, weights="$SAVED/checkpoints")),
    case("teacher-weights-torch-save-named-safetensors", "teacher.safetensors", "torch.save file",
         "rename it to .pt",
         edits=with_teacher({"loss": "kd"}, weights="$TMP/teacher.safetensors"),
         prepare=lambda env: torch.save({"w": torch.zeros(2)}, env.tmp / "teacher.safetensors")),
]  # fmt: skip


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_gives_one_line_exit_2_and_loses_nothing(
    bad: Case, env: Env, capsys, monkeypatch
):
    from distill.models import MODELS

    # Plugin cases import a module from the case folder (without leaving a __pycache__ behind) and
    # register a model in MODELS only for the duration of the case.
    monkeypatch.syspath_prepend(str(env.tmp))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.delitem(sys.modules, "fixed_head_plugin", raising=False)
    monkeypatch.setattr(MODELS, "_items", dict(MODELS._items))
    monkeypatch.setattr(MODELS, "_meta", dict(MODELS._meta))

    env.recipe.write_text(
        yaml.safe_dump(apply_edits(base_recipe(env.saved, env.data), env.subst(bad.edits)))
    )
    if bad.prepare is not None:
        bad.prepare(env)
    before = fingerprint(env.tmp)
    assert "saved-run/recipe.yaml" in before
    assert any(name.startswith("saved-run/checkpoints/") for name in before)

    code = main([env.subst(arg) for arg in bad.argv])
    out, err = capsys.readouterr()

    assert code == 2, f"exit code {code}; stderr: {err!r}"
    assert "Traceback" not in err + out
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    for needle in env.subst(bad.needles):
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    after = fingerprint(env.tmp)
    assert after == before, "a failed command changed, removed or added files"


def test_catalogue_is_large_enough():
    assert len(CASES) >= 40
