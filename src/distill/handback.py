"""Native hand-back: a trained run's student saved in its own family's format, checked by reloading it.

* ``hf`` (text students, ``hf:`` and ``from_teacher``): ``save_pretrained`` plus the tokenizer, loadable by
  ``transformers.AutoModelForSequenceClassification.from_pretrained`` and by sentence-transformers
  (:func:`distill.models.hf.save_hf`);
* ``ultralytics`` (``yolo:`` students): ``student.pt``, an Ultralytics checkpoint that ``YOLO(path)``
  loads and ``yolo export`` converts (:func:`distill.models.yolo.save_ultralytics`);
* ``image`` (every other image classifier): ``config.json`` with a timm-style ``pretrained_cfg`` (input
  size, mean/std, classes, architecture and its arguments) beside ``model.safetensors``, rebuilt by
  :func:`distill.models.pretrained_cfg.load_image_model` (timm students also by timm itself).

:func:`handback_run` writes the folder, reloads it the way its users will (transformers, distill's safe
Ultralytics reader, :func:`load_image_model`) and compares the outputs with the run's student on test
inputs; a folder whose reload disagrees is not kept.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.config.run import CHECKPOINTS, Run, open_run, run_recipe
from distill.errors import DistillError, did_you_mean
from distill.io import check_replaceable, follow_umask, write_json
from distill.models.hf import save_hf
from distill.models.pretrained_cfg import image_config, load_image_model, save_image_model
from distill.models.yolo import is_yolo, save_ultralytics

FORMATS = ("auto", "hf", "ultralytics", "image")
REPORT_NAME, YOLO_FILE = "handback.json", "student.pt"
CHECK_SAMPLES = 8  # test inputs the reloaded model is compared on
# outputs of the reloaded model may differ by this much (relative to the largest output)
RTOL = 1e-4


def native_format(student: nn.Module) -> str:
    """``ultralytics`` for a YOLO model, ``hf`` for a transformers model, ``image`` otherwise."""
    if is_yolo(student):
        return "ultralytics"
    if hasattr(student, "save_pretrained") and hasattr(student, "config"):
        return "hf"
    return "image"


def handback_run(
    run_dir: str | Path,
    format: str = "auto",
    out: str | Path | None = None,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """Save the run's student (``checkpoint``, default the recipe's ``export.checkpoint``) in its native
    ``format`` (``auto``: :func:`native_format`) into ``out`` (default ``RUN_DIR/<format>``) and return
    what the folder's ``handback.json`` holds: format, files, and ``check`` (the largest difference
    between the reloaded model's outputs and the student's on up to 8 test inputs)."""
    if format not in FORMATS:
        raise DistillError(
            f"unknown hand-back format {format!r}.{did_you_mean(str(format), FORMATS)} "
            f"Use one of {', '.join(FORMATS)}"
        )
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise DistillError(
            f"unknown checkpoint {checkpoint!r}.{did_you_mean(checkpoint, CHECKPOINTS)} "
            "Use best or last"
        )
    run_dir = Path(run_dir)
    if out is not None:
        check_replaceable(Path(out), REPORT_NAME, run_dir)
    run = open_run(run_dir, checkpoint or run_recipe(run_dir).export.checkpoint)
    native = native_format(run.student)
    if format not in ("auto", native):
        raise DistillError(
            f"the student of {run_dir} ({run.recipe.student.name}) hands back as {native}, not "
            f"{format}; use --format {native} (or auto)"
        )
    out_dir = Path(out) if out is not None else run_dir / native
    check_replaceable(out_dir, REPORT_NAME, run_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        files, reloaded = _SAVERS[native](run, staging)
        check = _check(run, reloaded)
        result = {
            "run_dir": str(run_dir),
            "checkpoint": run.checkpoint,
            "format": native,
            "student": run.recipe.student.name,
            "files": files,
            "check": check,
        }
        write_json(staging / REPORT_NAME, result)
        _swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**result, "folder": str(out_dir)}


def _save_hf(run: Run, folder: Path) -> tuple[list[str], nn.Module]:
    from distill.models.hf import load_hf_classifier

    causal = run.recipe.task == "causal_lm"
    max_length = int(getattr(run.test_data, "max_length", 128))
    save_hf(run.student, folder, None if causal else _classes(run), max_length, causal=causal)
    return _listing(folder), load_hf_classifier(folder, causal=causal)


def _save_ultralytics(run: Run, folder: Path) -> tuple[list[str], nn.Module]:
    from distill.models.yolo import yolo_model

    size = getattr(run.test_data, "image_size", None)
    path = save_ultralytics(
        run.student, folder / YOLO_FILE, _classes(run), size[0] if size else None
    )
    classes = len(run.student.names) if getattr(run.student, "names", None) else None
    # read back through distill's allow-listed loader: the file must not need arbitrary unpickling
    reloaded = yolo_model(str(path), classes or _num_classes(run), _in_channels(run))
    return _listing(folder), reloaded.eval()


def _save_image(run: Run, folder: Path) -> tuple[list[str], nn.Module]:
    spec = run.recipe.student
    if run.recipe.task == "causal_lm":
        raise DistillError(
            f"the student of {run.run_dir} ({spec.name}) is distill's own GPT, which has no Hugging Face "
            "class to hand back as; hand-back of language models needs an hf: student (or from_teacher "
            "of an hf: teacher); for this one use distill export (ONNX) or its model.safetensors"
        )
    size = getattr(run.test_data, "image_size", None)
    if size is None:
        raise DistillError(
            f"the test data of {run.run_dir} has no image_size; image hand-back needs image data"
        )
    config = image_config(
        run.student,
        spec.name,
        dict(spec.options),
        _num_classes(run),
        _in_channels(run),
        size,
        _classes(run),
    )
    save_image_model(run.student, folder, config)
    factory = None
    if config["library"] == "distill" and ":" in spec.name:  # a plugin: the recipe's own function
        from distill.models import MODELS

        factory = MODELS.get(spec.name)
    return _listing(folder), load_image_model(folder, factory=factory)


_SAVERS = {"hf": _save_hf, "ultralytics": _save_ultralytics, "image": _save_image}


def _check(run: Run, reloaded: nn.Module) -> dict[str, Any]:
    """The reloaded model against the run's student on the first test inputs; a mismatch is an error."""
    batch = next(iter(run.test_loader()), None)
    if batch is None:
        raise DistillError("the test split is empty; the hand-back is checked on test inputs")
    inputs = _take(run.task.split(batch).inputs, CHECK_SAMPLES)
    with torch.no_grad():
        want = _first(run.student, inputs)
        got = _first(reloaded, inputs)
    scale = float(want.abs().max()) or 1.0
    diff = float((want - got).abs().max()) if want.shape == got.shape else float("inf")
    ok = diff <= RTOL * scale
    if not ok:
        raise DistillError(
            f"the handed-back model's outputs differ from the student's by {diff:.3g} (largest output "
            f"{scale:.3g}); nothing was written. Please report this with the run's recipe"
        )
    return {"samples": _rows(inputs), "max_abs_diff": diff, "ok": ok}


def _first(model: nn.Module, inputs: Any) -> torch.Tensor:
    """The model's main output: the logits, or a detector's decoded predictions ``(B, 4 + C, A)``."""
    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return getattr(out, "logits", out).float()


def _take(inputs: Any, n: int) -> Any:
    if isinstance(inputs, Mapping):
        return {k: v[:n] for k, v in inputs.items()}
    return inputs[:n]


def _rows(inputs: Any) -> int:
    return len(next(iter(inputs.values()))) if isinstance(inputs, Mapping) else len(inputs)


def _classes(run: Run) -> list[str] | None:
    classes = getattr(run.test_data, "classes", None) or getattr(run.train_data, "classes", None)
    return [str(c) for c in classes] if classes else None


def _num_classes(run: Run) -> int:
    return int(run.train_data.num_classes)


def _in_channels(run: Run) -> int:
    return int(getattr(run.train_data, "in_channels", 3))


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by the complete ``staging`` folder (the old one is removed only after)."""
    old = None
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DistillError(f"{out_dir} exists and is not a folder; give --out another path")
        old = out_dir.with_name(f".{out_dir.name}.old-{int(time.time() * 1000)}")
        out_dir.rename(old)
    staging.chmod(0o755)
    follow_umask(staging)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
