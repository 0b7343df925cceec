"""Ultralytics YOLO detectors (the ``yolo`` extra; Ultralytics is AGPL-3.0, so it is never a core dependency).

``yolo:<model>`` builds an Ultralytics ``DetectionModel`` of any family Ultralytics knows:

* a built-in model yaml: ``yolo:yolov8n.yaml``, ``yolo:yolo11s.yaml``, ``yolo:yolo26n.yaml`` (the letter
  after the version picks the scale; ``.yaml`` may be left out: ``yolo:yolov8n``);
* a model yaml file of your own: ``yolo:path/to/model.yaml``;
* an Ultralytics checkpoint: ``yolo:path/to/best.pt`` (Ultralytics' own pickle format, read with
  ``torch.load(weights_only=True)`` and an allow-list of model and layer classes, so a file that would
  run code is refused: :func:`checkpoint_classes`). Official names such as ``yolo11n.pt`` are read from
  Ultralytics' weights folder; distill downloads nothing.

The class count comes from the data. A checkpoint trained on other classes keeps every weight whose shape
still fits (backbone, neck, box branch) and gets a new class branch, as Ultralytics' own fine-tuning does.
The model carries Ultralytics' default training hyperparameters (``model.args``: box/cls/dfl gains) so
its own loss works, and ``model.names``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError
from distill.safe_load import bare_classes, torch_load

YOLO_EXTRA_HINT = "pip install 'distill[yolo]' (Ultralytics, AGPL-3.0)"


def ultralytics() -> Any:
    """The ``ultralytics`` package, or a DistillError saying how to install the extra."""
    try:
        return importlib.import_module("ultralytics")
    except ImportError:
        raise DistillError(
            f"YOLO models and detection data need ultralytics, which is not installed; {YOLO_EXTRA_HINT}"
        ) from None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep Ultralytics' INFO chatter (model summaries, dataset scans) out of distill's progress output."""
    ultralytics()
    logger = logging.getLogger("ultralytics")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def default_args() -> Any:
    """Ultralytics' default hyperparameters (an ``IterableSimpleNamespace``), which its loss reads."""
    ultralytics()
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG

    return get_cfg(DEFAULT_CFG)


def yolo_model(source: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """A float32 Ultralytics ``DetectionModel`` for ``num_classes`` classes and ``in_channels`` input channels."""
    ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    if not source:
        raise DistillError(
            "yolo: name a model after 'yolo:', e.g. yolo:yolov8n.yaml, yolo:yolo11s.yaml or yolo:best.pt"
        )
    with quiet():
        if source.endswith((".pt", ".pth")):
            model = _from_checkpoint(source, num_classes, in_channels)
        else:
            cfg = _yaml(source)
            try:
                model = DetectionModel(cfg, ch=in_channels, nc=num_classes, verbose=False)
            except FileNotFoundError:
                raise DistillError(
                    f"yolo:{source}: no such model yaml file or Ultralytics model; use a built-in name "
                    "such as yolov8n.yaml, yolo11s.yaml, yolo26n.yaml, or the path of a model yaml"
                ) from None
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise DistillError(
                    f"yolo:{source} is not a detection model yaml Ultralytics can build ({err}); "
                    "use e.g. yolo:yolov8n.yaml or a yaml with backbone/head sections and a Detect head"
                ) from None
    _check_detect_head(model, source)
    model.args = default_args()
    model.names = {i: str(i) for i in range(num_classes)}
    return model.float()


def _yaml(source: str) -> str:
    """A yaml file path as is; a bare built-in name gets ``.yaml`` (Ultralytics resolves it and its scale)."""
    if Path(source).expanduser().is_file():
        return str(Path(source).expanduser())
    return source if source.endswith((".yaml", ".yml")) else f"{source}.yaml"


def checkpoint_classes() -> list[Any]:
    """The allow-list for Ultralytics checkpoints: what a real ``best.pt``/``last.pt`` pickles.

    Its ``DetectionModel`` and the layers it is made of (every ``nn.Module`` of ``ultralytics.nn.modules``
    and ``torch.nn``, so every YOLO family's blocks load), rebuilt but never called
    (:func:`distill.safe_load.bare_classes`); the ``IterableSimpleNamespace`` and paths of its training
    arguments; and the names older Ultralytics versions pickled for the same classes.
    """
    import pathlib

    from ultralytics.nn import modules as ultralytics_modules
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import IterableSimpleNamespace

    layers = {DetectionModel}
    for namespace in (vars(torch.nn), vars(ultralytics_modules)):
        layers |= {
            v for v in namespace.values() if isinstance(v, type) and issubclass(v, nn.Module)
        }
    for module in ("block", "conv", "head", "transformer", "activation"):
        namespace = vars(importlib.import_module(f"ultralytics.nn.modules.{module}"))
        layers |= {
            v for v in namespace.values() if isinstance(v, type) and issubclass(v, nn.Module)
        }
    aliases = {
        "ultralytics.nn.tasks.YOLOv10DetectionModel": DetectionModel,
        "ultralytics.nn.modules.block.Silence": torch.nn.Identity,
    }
    return [
        *bare_classes(sorted(layers, key=str), aliases),
        IterableSimpleNamespace,
        (IterableSimpleNamespace, "ultralytics.yolo.utils.IterableSimpleNamespace"),
        pathlib.PosixPath,
    ]


def _from_checkpoint(source: str, num_classes: int, in_channels: int) -> nn.Module:
    """An Ultralytics checkpoint read with ``torch.load(weights_only=True)`` and
    :func:`checkpoint_classes`: a file that needs anything else is refused, never unpickled."""
    from ultralytics.nn.tasks import DetectionModel

    path = Path(source).expanduser()
    if not path.is_file() and not path.parent.name:  # an official name: Ultralytics' weights folder
        from ultralytics.utils import SETTINGS

        path = Path(SETTINGS.get("weights_dir", ".")) / path.name
    if not path.is_file():
        raise DistillError(
            f"yolo:{source}: checkpoint not found; give the path of an Ultralytics .pt file, or a "
            "model yaml to train from scratch"
        )
    fix = (
        "re-save it with a current Ultralytics (distill loads checkpoints that hold a detection model "
        "and its layers only), or give a model yaml"
    )
    ckpt = torch_load(path, f"yolo:{source}", fix, checkpoint_classes())
    loaded = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else ckpt
    if not isinstance(loaded, DetectionModel):
        raise DistillError(
            f"yolo:{source} holds a {type(loaded).__name__}, not a detection model; "
            "give a detection checkpoint (task=detect)"
        )
    loaded = loaded.float()
    if not hasattr(loaded, "stride"):
        loaded.stride = torch.tensor([32.0])
    for module in loaded.modules():  # as Ultralytics' own loader leaves them
        if hasattr(module, "inplace"):
            module.inplace = True
    same = loaded.yaml.get("nc") == num_classes and loaded.yaml.get("channels", 3) == in_channels
    if same:
        return loaded
    model = DetectionModel(loaded.yaml.copy(), ch=in_channels, nc=num_classes, verbose=False)
    model.load(loaded, verbose=False)  # every weight whose shape still fits
    return model


def _check_detect_head(model: nn.Module, source: str) -> None:
    from ultralytics.nn.modules.head import Detect

    head = model.model[-1]
    if not isinstance(head, Detect) or type(head).__name__ not in ("Detect", "v10Detect"):
        raise DistillError(
            f"yolo:{source} ends in a {type(head).__name__} head; distill's detection task needs a plain "
            "Detect head (box detection); segmentation, pose and OBB models are not supported yet"
        )


def detect_head(model: nn.Module) -> nn.Module:
    """The model's ``Detect`` head (its last layer), or a DistillError for models that are not YOLO detectors."""
    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    if head is None or not hasattr(head, "stride") or not hasattr(head, "reg_max"):
        raise DistillError(
            f"the detection task needs an Ultralytics detection model (yolo:...), got {type(model).__name__}; "
            "build it with yolo:<model yaml or .pt>"
        )
    return head


def is_yolo(model: nn.Module) -> bool:
    """Whether ``model`` is an Ultralytics YOLO model (without importing ultralytics)."""
    return type(model).__module__.startswith("ultralytics.")


def export_view(model: nn.Module) -> nn.Module:
    """A copy of a YOLO model that returns only its decoded predictions ``(B, 4 + classes, A)``
    (boxes as centre x, y, width, height in pixels, then class probabilities) and recomputes its anchor
    grid from the input, as Ultralytics' own ONNX export sets it up; the original is left as it is."""
    import copy

    view = copy.deepcopy(model).eval()
    head = detect_head(view)
    head.export, head.dynamic, head.format = True, True, "onnx"
    # YOLO26: export the one-to-many predictions, so its files are NMS'd like the other families'
    if getattr(head, "end2end", False):
        head.end2end = False
    return view


def save_ultralytics(
    model: nn.Module,
    path: str | Path,
    names: list[str] | None = None,
    imgsz: int | None = None,
) -> Path:
    """Write ``model`` as an Ultralytics checkpoint (the dict ``strip_optimizer`` leaves at the end of
    ``yolo train``) that ``ultralytics.YOLO(path)`` loads and ``yolo export model=path`` converts.

    The model is stored in float32 (Ultralytics' own files are float16; it reads both), with ``names``
    (class index to name), its training arguments as a plain dict and ``train_args`` of Ultralytics'
    default keys with ``task=detect`` and ``imgsz``. Everything in it is on distill's allow-list
    (:func:`checkpoint_classes`), so ``yolo:PATH`` reads it back without arbitrary unpickling.
    """
    import copy
    from datetime import datetime

    ultralytics()
    from ultralytics import __version__
    from ultralytics.utils import DEFAULT_CFG_DICT, DEFAULT_CFG_KEYS

    detect_head(model)
    saved = copy.deepcopy(model).float().eval()
    saved.names = dict(enumerate(names)) if names else dict(getattr(model, "names", {}) or {})
    args = {**DEFAULT_CFG_DICT, **dict(vars(default_args())), "task": "detect"}
    if imgsz is not None:
        args["imgsz"] = int(imgsz)
    args = {k: v for k, v in args.items() if k in DEFAULT_CFG_KEYS}
    saved.args = dict(args)
    if hasattr(saved, "criterion"):
        saved.criterion = None  # training-only state, as Ultralytics strips it
    for p in saved.parameters():
        p.requires_grad_(False)
    checkpoint = {
        "date": datetime.now().astimezone().isoformat(),
        "version": __version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "epoch": -1,
        "best_fitness": None,
        "model": saved,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": args,
        "train_metrics": None,
        "train_results": None,
    }
    path = Path(path)
    torch.save(checkpoint, path)
    return path
