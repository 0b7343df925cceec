"""Image students handed back as a folder that rebuilds them: ``config.json`` + ``model.safetensors``.

``config.json`` follows timm's hub layout (what ``timm.models.push_to_hf_hub`` writes):
``architecture``, ``num_classes``, ``label_names``, ``model_args`` (the builder's keyword arguments) and a
``pretrained_cfg`` with the input the weights expect: ``input_size`` ``[C, H, W]``, ``mean`` and ``std``
(normalise ``[0, 1]`` pixels by ``(x - mean) / std``), ``interpolation`` and ``crop_pct``. A ``library``
key says who builds ``architecture``: ``timm`` (then ``timm.create_model("local-dir:FOLDER",
pretrained=True)`` loads the folder with timm alone), ``torchvision`` or ``distill`` (the model zoo);
``distill`` holds the recipe's model name and options.

distill's datasets feed every model ``[0, 1]`` images; a pretrained ``timm:``/``torchvision:`` student
normalises them itself (:mod:`distill.models.preprocess`). ``mean``/``std`` are that normalisation, or
0 and 1 when the model has none, so a user preparing inputs the timm way feeds the weights what they
were trained on. :func:`load_image_model` rebuilds the model (with the normalisation inside, as distill
ran it, unless ``normalize=False``) without a recipe.
"""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from distill.errors import DistillError
from distill.models.preprocess import InputNorm, add_input_norm

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
LIBRARIES = ("timm", "torchvision")  # model name prefixes built by another library
# recipe options that choose how distill builds a model, not what the weights are
BUILD_OPTIONS = ("pretrained", "normalize", "resize")


def image_config(
    model: nn.Module,
    name: str,
    options: dict[str, Any],
    num_classes: int,
    in_channels: int,
    image_size: Sequence[int],
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` of a student built as ``name`` with ``options`` for ``num_classes`` classes
    and ``(in_channels, *image_size)`` inputs; ``model`` supplies its input normalisation, if any."""
    prefix, sep, arch = name.partition(":")
    library = prefix if sep and prefix in LIBRARIES else "distill"
    if library == "distill":
        arch = name
    kept = {k: v for k, v in options.items() if k not in BUILD_OPTIONS}
    if library == "timm":
        model_args = {"in_chans": in_channels, **kept}
    else:
        model_args = {"in_channels": in_channels, **kept}
    norm = getattr(model, "input_norm", None)
    size = [int(s) for s in image_size[-2:]]
    if isinstance(norm, InputNorm):
        mean, std = norm.mean.flatten().tolist(), norm.std.flatten().tolist()
        size = list(norm.size) if norm.size is not None else size
    else:
        mean, std = [0.0] * in_channels, [1.0] * in_channels
    labels = [str(c) for c in classes] if classes else [str(i) for i in range(num_classes)]
    config = {
        "architecture": arch,
        "library": library,
        "num_classes": num_classes,
        "label_names": labels,
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [in_channels, *size],
            "mean": [round(v, 6) for v in mean],
            "std": [round(v, 6) for v in std],
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "num_classes": num_classes,
            "fixed_input_size": False,
        },
        "distill": {"model": name, "options": options, "input_norm": isinstance(norm, InputNorm)},
    }
    json.dumps(config)  # options come from YAML: always JSON data
    return config


def save_image_model(model: nn.Module, folder: str | Path, config: dict[str, Any]) -> Path:
    """Write ``config`` (:func:`image_config`) and the model's weights (safetensors) into ``folder``."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_model(copy.deepcopy(model).cpu(), str(folder / WEIGHTS_NAME))
    return folder


def read_config(folder: str | Path) -> dict[str, Any]:
    """A hand-back folder's ``config.json``, or a one-line error naming what is missing."""
    path = Path(folder) / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise DistillError(
            f"{folder} has no {CONFIG_NAME}; give a folder written by `distill handback`"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DistillError(f"{path} is not valid JSON ({err}); write it again") from None
    missing = [k for k in ("architecture", "num_classes", "pretrained_cfg") if k not in config]
    if missing:
        raise DistillError(f"{path} lacks {', '.join(missing)}; give a folder written by distill")
    return config


def load_image_model(
    folder: str | Path,
    normalize: bool = True,
    factory: Callable[..., nn.Module] | None = None,
) -> nn.Module:
    """The model saved in ``folder`` by :func:`save_image_model`, in eval mode.

    With ``normalize`` the model takes ``[0, 1]`` images and normalises them itself by the config's
    ``mean``/``std`` (and resizes them to ``input_size``), as it ran in distill; without it, it takes
    inputs already prepared that way. A plugin model (``module:function``) is rebuilt by ``factory``,
    the function named in ``config.json``'s ``distill.model``: distill never imports code a file names.
    """
    from distill.models import build_model

    config = read_config(folder)
    cfg = config["pretrained_cfg"]
    library, arch = config.get("library", "distill"), config["architecture"]
    args = dict(config.get("model_args", {}))
    channels = int(
        args.pop("in_chans" if library == "timm" else "in_channels", cfg["input_size"][0])
    )
    num_classes = int(config["num_classes"])
    if library in LIBRARIES:
        model = build_model(f"{library}:{arch}", num_classes, channels, normalize="none", **args)
    elif factory is not None:
        model = factory(num_classes=num_classes, in_channels=channels, **args)
    elif ":" in arch and not _registered(arch):
        raise DistillError(
            f"{folder}: model {arch!r} is a plugin; import it yourself and pass its function as "
            "load_image_model(folder, factory=...)"
        )
    else:
        model = build_model(arch, num_classes, channels, **args)
    _load_weights(model, Path(folder) / WEIGHTS_NAME)
    if normalize and not _identity(cfg["mean"], cfg["std"]):
        add_input_norm(model, cfg["mean"], cfg["std"], channels, cfg["input_size"][1:])
    return model.eval()


def _registered(name: str) -> bool:
    return name in importlib.import_module("distill.models").MODELS


def _identity(mean: Sequence[float], std: Sequence[float]) -> bool:
    return all(m == 0 for m in mean) and all(s == 1 for s in std)


def _load_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    if not path.is_file():
        raise DistillError(f"{path} is missing; give a folder written by `distill handback`")
    try:
        load_model(model, str(path), strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise DistillError(
            f"{path} does not fit the model its config.json describes ({first}); save the folder again"
        ) from None
