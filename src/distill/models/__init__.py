"""Classification model zoo: small CNN / MLP / CIFAR-ResNet / MobileNet factories plus adapters.

Every registered factory is ``f(num_classes: int = 10, in_channels: int = 1, **options) -> nn.Module``
and the model maps ``[N, in_channels, H, W]`` images to raw logits ``[N, num_classes]``.
Build by name with :func:`build_model`; ``"torchvision:<name>"`` and ``"timm:<name>"`` reach
the classification models of those libraries (the ``vision`` extra), ``"hf:<folder or hub id>"`` a
Hugging Face sequence classifier or causal LM taking token ids (the ``text`` extra,
:mod:`distill.models.hf`). ``gpt``, ``gpt_teacher`` and ``gpt_student`` (:mod:`distill.models.gpt`) are
causal LMs whose ``num_classes`` is the vocabulary size.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import math
import re
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError, did_you_mean
from distill.models.hf import hf_model
from distill.models.preprocess import add_input_norm, check_normalize, wants_norm
from distill.models.yolo import yolo_model
from distill.registry import Registry
from distill.safe_load import needs_unpickling, refusal_detail

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")
ADAPTERS = ("torchvision", "timm", "hf", "yolo")
VISION_EXTRA_HINT = "install the vision extra: pip install 'distill[vision]'"
TAPS_HINT = "module names for taps: distill list taps NAME [key=value ...]"
# `distill list models`: one row per adapter, after the registered models
ADAPTER_ROWS = (
    {
        "name": "torchvision:<arch>",
        "family": "adapter",
        "description": "torchvision.models.get_model(arch) (vision extra); options: pretrained "
        "(DEFAULT weights, downloaded), normalize (auto: the weights' mean/std when pretrained; "
        "always; none), resize (to the weights' crop size), the builder's keyword arguments; archs: "
        f"torchvision.models.list_models(); {TAPS_HINT}",
    },
    {
        "name": "timm:<arch>",
        "family": "adapter",
        "description": "timm.create_model(arch) (vision extra; arch may be hf-hub:ORG/NAME); options: "
        "pretrained, normalize (auto: the pretrained config's mean/std when pretrained; always; none), "
        f"resize, timm's keyword arguments (drop_rate, ...); archs: timm.list_models(); {TAPS_HINT}",
    },
    {
        "name": "hf:<folder or hub id>",
        "family": "adapter",
        "description": "Hugging Face sequence classifier or causal LM on token ids (text extra); options: "
        "pretrained (default true), head (auto | classification | causal_lm), config.json entries "
        f"(hidden_dropout_prob, ...); {TAPS_HINT}",
    },
    {
        "name": "yolo:<yaml or .pt>",
        "family": "adapter",
        "description": "Ultralytics YOLO detector for the detection task (detection extra); no "
        f"options, the scale is in the name (yolov8n.yaml); {TAPS_HINT}",
    },
)
_COMMON_ARGS = ("num_classes", "in_channels")


def check_option(ok: bool, model: str, option: str, value: Any, expected: str) -> None:
    """Raise a one-line :class:`DistillError` unless ``ok``, e.g. ``cnn: invalid dropout=1.5; expected ...``."""
    if not ok:
        raise DistillError(f"{model}: invalid {option}={value!r}; expected {expected}")


def is_positive_int(value: Any) -> bool:
    """True for ints >= 1 (bools excluded)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_dropout(model: str, dropout: Any) -> None:
    """Dropout must be a probability in ``[0, 1)``."""
    ok = isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1
    check_option(ok, model, "dropout", dropout, "a probability 0 <= dropout < 1")


def model_options(name: str) -> dict[str, Any]:
    """Options (beyond num_classes/in_channels) a registered model accepts, with their defaults."""
    params = inspect.signature(MODELS.get(name)).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in _COMMON_ARGS
    }


def build_model(name: str, num_classes: int = 10, in_channels: int = 1, **kwargs: Any) -> nn.Module:
    """Build model ``name`` (a registered name, ``torchvision:<arch>`` or ``timm:<arch>``).

    ``kwargs`` are the factory's options; adapters also take ``pretrained: bool = False``.
    """
    check_option(is_positive_int(num_classes), name, "num_classes", num_classes, "an int >= 1")
    check_option(is_positive_int(in_channels), name, "in_channels", in_channels, "an int >= 1")
    source, sep, arch = name.partition(":")
    if sep and name not in MODELS:  # registered names may hold ':' (a recipe's module:function)
        adapters = {
            "torchvision": _torchvision_model,
            "timm": _timm_model,
            "hf": _hf_model,
            "yolo": _yolo_model,
        }
        if source not in adapters:
            raise DistillError(
                f"unknown model source {source!r} in {name!r}.{did_you_mean(source, ADAPTERS)} "
                "Use 'torchvision:<name>', 'timm:<name>', 'hf:<folder or hub id>', 'yolo:<yaml or .pt>' "
                "or a registered model name"
            )
        return adapters[source](arch, num_classes, in_channels, **kwargs)
    return MODELS.create(name, kwargs, num_classes=num_classes, in_channels=in_channels)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (shared-once) parameter elements, optionally only those with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of parameters plus buffers as stored (``numel * element_size``, dtype-aware)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


# --- adapters -------------------------------------------------------------------------------


def _import_vision(package: str, name: str) -> ModuleType:
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise DistillError(
            f"model {name!r} needs {package}, which is not installed; {VISION_EXTRA_HINT}"
        ) from err


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def _adapt_rgb_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Map pretrained RGB filters ``[O, 3, kh, kw]`` to ``[O, in_channels, kh, kw]`` (timm's recipe)."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / 3)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (3 / in_channels)


def _adapt_first_conv(model: nn.Module, in_channels: int, pretrained: bool, name: str) -> None:
    """Replace the first RGB ``Conv2d`` by one taking ``in_channels`` inputs."""
    found = next(
        (
            (path, m)
            for path, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.in_channels == 3
        ),
        None,
    )
    if found is None:
        raise DistillError(
            f"cannot adapt {name!r} to in_channels={in_channels}: no RGB Conv2d; use in_channels=3"
        )
    path, old = found
    new = nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
        old.groups, bias=old.bias is not None, padding_mode=old.padding_mode,
    )  # fmt: skip
    if pretrained:
        with torch.no_grad():
            new.weight.copy_(_adapt_rgb_weight(old.weight, in_channels))
            if old.bias is not None:
                new.bias.copy_(old.bias)
    _set_submodule(model, path, new)


def _replace_classifier(model: nn.Module, num_classes: int, old_classes: int, name: str) -> None:
    """Swap the last Linear / 1x1 Conv2d head (``old_classes`` outputs) for a fresh one."""
    heads = [(p, m) for p, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    path, old = heads[-1] if heads else ("", None)
    if isinstance(old, nn.Linear) and old.out_features == old_classes:
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    elif (
        isinstance(old, nn.Conv2d) and old.out_channels == old_classes and old.kernel_size == (1, 1)
    ):
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
    else:
        raise DistillError(
            f"cannot find the classifier of {name!r} to resize it to num_classes={num_classes}; "
            f"use num_classes={old_classes} or pretrained=False"
        )
    _set_submodule(model, path, new)


def _torchvision_model(
    arch: str,
    num_classes: int,
    in_channels: int,
    pretrained: bool = False,
    normalize: str = "auto",
    resize: bool = False,
    **options: Any,
) -> nn.Module:
    """``torchvision.models.get_model(arch)``, random init unless ``pretrained`` (DEFAULT weights);
    ``normalize`` / ``resize``: the DEFAULT weights' ``transforms()`` mean, std and crop size, applied
    inside the model (:mod:`distill.models.preprocess`)."""
    name = f"torchvision:{arch}"
    check_normalize(name, normalize, resize)
    _import_vision("torchvision", name)
    tv_models = importlib.import_module("torchvision.models")
    known = tv_models.list_models(module=tv_models)  # classification models only
    if arch not in known:
        raise DistillError(
            f"unknown torchvision model {arch!r}.{did_you_mean(arch, known)} "
            "See torchvision.models.list_models() for the classification models"
        )
    if "weights" in options:
        raise DistillError(
            f"model {name!r} does not take 'weights'; pass pretrained=True for the default weights"
        )
    weights = tv_models.get_model_weights(arch).DEFAULT if pretrained else None
    kwargs = options if pretrained else {"num_classes": num_classes, **options}
    try:
        with _weights_only_hub():
            model = tv_models.get_model(arch, weights=weights, **kwargs)
    except TypeError as err:
        raise DistillError(f"model {name!r} rejected options {sorted(options)}: {err}") from err
    except Exception as err:  # noqa: BLE001 - the weights file refused by weights_only
        if not needs_unpickling(err):
            raise
        raise DistillError(
            f"the pretrained weights of {name!r} (in {torch.hub.get_dir()}) need arbitrary "
            f"unpickling, which can run code, so distill refuses them ({refusal_detail(err)}); "
            "delete that file so torchvision downloads it again"
        ) from None
    if weights is not None and num_classes != len(weights.meta["categories"]):
        _replace_classifier(model, num_classes, len(weights.meta["categories"]), name)
    if in_channels != 3:
        _adapt_first_conv(model, in_channels, pretrained, name)
    if wants_norm(normalize, pretrained):
        default = tv_models.get_model_weights(arch).DEFAULT  # an enum entry: nothing is downloaded
        preset = default.transforms()
        crop = list(preset.crop_size)  # [224] or [H, W]
        size = (crop[0], crop[-1]) if resize else None
        add_input_norm(model, preset.mean, preset.std, in_channels, size)
    return model


@contextlib.contextmanager
def _weights_only_hub() -> Iterator[None]:
    """torchvision's builders read their weights file (downloaded, or found in torch.hub's cache) with
    ``torch.hub.load_state_dict_from_url``, whose default is ``weights_only=False``; read it as
    tensors only."""
    api = importlib.import_module("torchvision.models._api")
    original = api.load_state_dict_from_url
    api.load_state_dict_from_url = functools.partial(original, weights_only=True)
    try:
        yield
    finally:
        api.load_state_dict_from_url = original


TIMM_HUB = re.compile(r"^hf-hub:[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def timm_hub_id(arch: str) -> str | None:
    """The Hugging Face hub id of ``hf-hub:ORG/NAME[@REVISION]`` (timm's own prefix), None for a
    timm architecture name; a malformed ``hf-hub:`` name is an error naming the expected form."""
    if not arch.startswith("hf-hub:"):
        return None
    if not TIMM_HUB.match(arch):
        raise DistillError(
            f"timm model {arch!r} is not a hub name; use timm:hf-hub:ORG/NAME (e.g. "
            "timm:hf-hub:timm/resnet18.a1_in1k), optionally @REVISION"
        )
    return arch.removeprefix("hf-hub:")


def _timm_model(
    arch: str,
    num_classes: int,
    in_channels: int,
    pretrained: bool = False,
    normalize: str = "auto",
    resize: bool = False,
    **options: Any,
) -> nn.Module:
    """``timm.create_model(arch, pretrained, num_classes, in_chans)``; timm adapts stem and head.
    ``arch`` is a timm architecture or ``hf-hub:ORG/NAME`` (timm reads its config and weights from the
    hub). ``normalize`` / ``resize``: the model's pretrained config (``resolve_model_data_config``) mean,
    std and input size, applied inside the model (:mod:`distill.models.preprocess`)."""
    name = f"timm:{arch}"
    check_normalize(name, normalize, resize)
    hub_id = timm_hub_id(arch)  # a malformed hub name is reported before timm is needed
    timm = _import_vision("timm", name)
    if hub_id is None and not timm.is_model(arch):
        raise DistillError(
            f"unknown timm model {arch!r}.{did_you_mean(arch, timm.list_models())} "
            "See timm.list_models() for the architectures, or use hf-hub:ORG/NAME"
        )
    try:
        model = timm.create_model(
            arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **options
        )
    except TypeError as err:
        raise DistillError(f"model {name!r} rejected options {sorted(options)}: {err}") from err
    if wants_norm(normalize, pretrained):
        config = importlib.import_module("timm.data").resolve_model_data_config(model)
        size = config["input_size"] if resize else None
        add_input_norm(model, config["mean"], config["std"], in_channels, size)
    return model


def _hf_model(source: str, num_classes: int, in_channels: int, **options: Any) -> nn.Module:
    """``hf:<folder or hub id>``: see :func:`distill.models.hf.hf_model` (``in_channels`` is unused)."""
    return hf_model(source, num_classes, **options)


def _yolo_model(source: str, num_classes: int, in_channels: int, **options: Any) -> nn.Module:
    """``yolo:<yaml or .pt>``: see :func:`distill.models.yolo.yolo_model` (no options)."""
    if options:
        raise DistillError(
            f"yolo:{source} takes no options, got {sorted(options)}; pick the scale in the name "
            "(yolov8n.yaml, yolov8s.yaml, ...) or write a model yaml"
        )
    return yolo_model(source, num_classes, in_channels)


# Importing the model modules registers their factories (they import MODELS from here).
from distill.models import cnn, gpt, mlp, mobilenet, resnet_cifar  # noqa: E402, F401
from distill.models.gpt import GPT, gpt_from_teacher  # noqa: E402
from distill.models.hf import student_from_teacher as hf_student_from_teacher  # noqa: E402


def student_from_teacher(
    teacher: nn.Module,
    layers: list[int] | None = None,
    uniform: int | None = None,
    hidden_size: int | None = None,
) -> nn.Module:
    """The ``from_teacher`` student: :func:`distill.models.gpt.gpt_from_teacher` for a ``gpt``
    teacher, else :func:`distill.models.hf.student_from_teacher` (Hugging Face encoders and causal LMs)."""
    if isinstance(teacher, GPT):
        return gpt_from_teacher(teacher, layers, uniform, hidden_size)
    return hf_student_from_teacher(teacher, layers, uniform, hidden_size)


__all__ = [
    "ADAPTERS",
    "ADAPTER_ROWS",
    "MODELS",
    "ModelFactory",
    "build_model",
    "timm_hub_id",
    "check_dropout",
    "check_option",
    "is_positive_int",
    "count_parameters",
    "model_options",
    "model_size_bytes",
    "student_from_teacher",
]
