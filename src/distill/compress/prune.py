"""Pruning, each step ``nn.Module -> nn.Module`` (a pruned copy; the input model is left as it was).

* :func:`magnitude_prune`: unstructured L1 pruning through ``torch.nn.utils.prune`` (global or per layer).
  The zeros do not shrink a dense model: size on disk and latency stay the same; :func:`count_nonzero`
  reports what was removed. Keep ``permanent=False`` while fine-tuning (the masks keep pruned weights at
  zero), then call :func:`make_permanent`.
* :func:`channel_prune`: structured channel pruning with the dependency graph of ``torch-pruning``
  (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023). Coupled layers (a conv, its
  BatchNorm, the next layer's inputs) lose the same channels, so the result is a really smaller dense model.

A channel-pruned model no longer matches its recipe's architecture: :func:`save_pruned` writes a plain
safetensors state dict with the per-layer channel counts in its header, and :func:`load_pruned` shrinks a
freshly built original model to those counts before loading the weights (no pickled modules, ever).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from distill.errors import DistillError, did_you_mean, first_line
from distill.train.checkpoint import save_model

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Module types whose parameters torch-pruning knows how to slice (its built-in pruning functions).
KNOWN_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.PReLU,
    nn.Embedding,
    nn.MultiheadAttention,
    nn.LSTM,
)
SHAPE_ATTRS = ("in_channels", "out_channels", "in_features", "out_features", "num_features")
IMPORTANCES = ("l1", "l2", "fpgm", "lamp", "random")


def count_nonzero(model: nn.Module) -> tuple[int, int]:
    """``(nonzero, total)`` parameter entries: what unstructured pruning really removed."""
    params = list(model.parameters())
    return sum(int(p.count_nonzero()) for p in params), sum(p.numel() for p in params)


def _check_fraction(value: float, what: str, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise DistillError(
            f"{what} must be a fraction in [0, 1), got {value!r}; use e.g. {example}"
        )


def _named(model: nn.Module, modules: Iterable[nn.Module]) -> list[str]:
    names = {id(m): n for n, m in model.named_modules()}
    return [names.get(id(m), type(m).__name__) for m in modules]


def magnitude_prune(
    model: nn.Module,
    amount: float,
    scope: Literal["global", "layer"] = "global",
    layer_types: Sequence[type[nn.Module]] = PRUNABLE,
    ignored_layers: Iterable[str] = (),
    permanent: bool = True,
) -> nn.Module:
    """A copy of ``model`` with the ``amount`` fraction of smallest-|w| weights set to zero.

    ``scope="global"`` ranks the weights of all pruned layers together (layers keep different sparsities);
    ``"layer"`` prunes ``amount`` of each layer. Only the ``weight`` of modules of ``layer_types`` is
    pruned, minus the module names in ``ignored_layers``; biases and norm scales are kept.
    """
    from torch.nn.utils import prune

    _check_fraction(amount, "magnitude_prune: amount", "0.5 (half the weights)")
    if scope not in ("global", "layer"):
        raise DistillError(f"magnitude_prune: scope must be 'global' or 'layer', got {scope!r}")
    model = copy.deepcopy(model)
    targets = _magnitude_targets(model, tuple(layer_types), set(ignored_layers))
    if scope == "global":
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    else:
        for module, name in targets:
            prune.l1_unstructured(module, name, amount=amount)
    return make_permanent(model) if permanent else model


def _magnitude_targets(
    model: nn.Module, layer_types: tuple[type[nn.Module], ...], ignored: set[str]
) -> list[tuple[nn.Module, str]]:
    names = dict(model.named_modules())
    unknown = sorted(ignored - names.keys())
    if unknown:
        raise DistillError(
            f"magnitude_prune: ignored_layers names {unknown[0]!r}, which is not a module of the model."
            f"{did_you_mean(unknown[0], names)}"
        )
    targets = []
    for name, module in names.items():
        if not isinstance(module, layer_types) or name in ignored:
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter):
            raise DistillError(
                f"magnitude_prune: module {name!r} ({type(module).__name__}) has no weight parameter to "
                "prune; leave its type out of layer_types or name it in ignored_layers"
            )
        targets.append((module, "weight"))
    if not targets:
        kinds = sorted(
            {type(m).__name__ for m in names.values() if any(True for _ in m.parameters(False))}
        )
        raise DistillError(
            f"magnitude_prune: the model has no {'/'.join(t.__name__ for t in layer_types)} layers to "
            f"prune (it has {', '.join(kinds) or 'no parameters'}); pass layer_types=(...) with its layers"
        )
    return targets


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold ``torch.nn.utils.prune`` masks into the weights (``weight_orig * weight_mask -> weight``)."""
    from torch.nn.utils import prune

    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return model


def _importance(name: str) -> Any:
    import torch_pruning as tp

    makers: dict[str, Callable[[], Any]] = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "fpgm": tp.importance.FPGMImportance,
        "lamp": tp.importance.LAMPImportance,
        "random": tp.importance.RandomImportance,
    }
    if name not in makers:
        raise DistillError(
            f"channel_prune: unknown importance {name!r}.{did_you_mean(name, makers)} "
            f"Choose from {', '.join(makers)}"
        )
    return makers[name]()


def _final_layer(model: nn.Module) -> nn.Module:
    """The last Linear/conv layer registered: the classifier, whose outputs are the classes."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    if not layers:
        raise DistillError(
            "channel_prune: the model has no Linear or convolution layers; nothing can be channel-pruned"
        )
    return layers[-1]


def _check_known_layers(model: nn.Module, custom: dict[type, Any]) -> None:
    """Every module that holds parameters itself must be a type torch-pruning can slice."""
    for name, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if isinstance(module, KNOWN_TYPES) or type(module) in custom:
            continue
        raise DistillError(
            f"channel_prune: module {name!r} ({type(module).__name__}) holds its own parameters and "
            f"torch-pruning has no rule to slice them; pass customized_pruners={{{type(module).__name__}: "
            "<tp.pruner.BasePruningFunc>}, or use magnitude_prune, which keeps the architecture"
        )


def _output(model: nn.Module, example: Any) -> torch.Tensor:
    out = model(*example) if isinstance(example, tuple) else model(example)
    if isinstance(out, dict):
        out = out["logits"]
    return out[0] if isinstance(out, (tuple, list)) else out


def channel_prune(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ratio: float,
    ignored_layers: Iterable[str] | None = None,
    importance: str = "l1",
    round_to: int | None = None,
    customized_pruners: dict[type, Any] | None = None,
) -> nn.Module:
    """A copy of ``model`` with the ``ratio`` fraction of channels (conv) and features (Linear) removed.

    ``example_inputs`` is one batch the model accepts, used to trace the layer dependencies.
    ``ignored_layers`` (module names) keep their output channels; the default is the final classifier, so
    the model keeps one output per class. ``importance`` ranks channels: ``l1`` / ``l2`` norm of their
    weights, ``fpgm``, ``lamp`` or ``random``. Layers with parameters of a type torch-pruning cannot slice
    are refused by name, and the pruned model must run on the example with the original output shape.
    """
    try:
        import torch_pruning as tp
    except ImportError:
        raise DistillError(
            "channel pruning needs torch-pruning: pip install 'distill[compress]'"
        ) from None
    _check_fraction(ratio, "channel_prune: ratio", "0.5 (half the channels)")
    custom = dict(customized_pruners or {})
    # the tracer follows autograd: no frozen copies
    model = copy.deepcopy(model).eval().requires_grad_(True)
    _check_known_layers(model, custom)
    names = dict(model.named_modules())
    if ignored_layers is None:
        ignored = [_final_layer(model)]
    else:
        ignored = []
        for name in ignored_layers:
            if name not in names:
                raise DistillError(
                    f"channel_prune: ignored_layers names {name!r}, which is not a module of the model."
                    f"{did_you_mean(name, names)}"
                )
            ignored.append(names[name])
    with torch.no_grad():
        before = _output(model, example_inputs)
    with torch.enable_grad():
        pruner = tp.pruner.MetaPruner(
            model,
            example_inputs,
            importance=_importance(importance),
            pruning_ratio=ratio,
            ignored_layers=ignored,
            round_to=round_to,
            customized_pruners=custom or None,
        )
        pruner.step()
    try:
        with torch.no_grad():
            after = _output(model, example_inputs)
    except RuntimeError as err:
        raise DistillError(
            f"channel_prune: the pruned model fails on the example input ({first_line(err)}); "
            "code with fixed channel counts (view/reshape to a constant size) cannot be channel-pruned: "
            "name the layers feeding it in ignored_layers"
        ) from None
    if after.shape != before.shape:
        raise DistillError(
            f"channel_prune: pruning changed the output shape from {tuple(before.shape)} to "
            f"{tuple(after.shape)}; name the output layer in ignored_layers"
        )
    return model


def layer_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per-module channel counts (``in_channels``, ``out_channels``, ``in/out_features``, ``num_features``)."""
    return {
        name: {a: int(getattr(m, a)) for a in SHAPE_ATTRS if isinstance(getattr(m, a, None), int)}
        for name, m in model.named_modules()
        if any(isinstance(getattr(m, a, None), int) for a in SHAPE_ATTRS)
    }


def save_pruned(model: nn.Module, path: str | Path) -> Path:
    """Write a (pruned) model as a plain safetensors state dict with its channel counts in the header."""
    path = Path(path)
    save_model(path, model, metadata={"distill.layer_shapes": json.dumps(layer_shapes(model))})
    return path


def load_pruned(model: nn.Module, path: str | Path) -> nn.Module:
    """Shrink ``model`` (the original, unpruned architecture) to the file's channel counts and load it.

    Every parameter and buffer whose shape differs is replaced by one of the saved shape, the module's
    channel attributes are set from the header, then the state dict is loaded strictly.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "distill.layer_shapes" not in meta:
        raise DistillError(
            f"{path} has no channel counts in its header; write pruned models with save_pruned()"
        )
    state = load_file(str(path))
    modules = dict(model.named_modules())
    for name, attrs in json.loads(meta["distill.layer_shapes"]).items():
        if name not in modules:
            raise DistillError(f"{path}: module {name!r} is not in the model; build the same model")
        for attr, value in attrs.items():
            setattr(modules[name], attr, value)
    for key, saved in state.items():
        owner, _, leaf = key.rpartition(".")
        module = modules.get(owner)
        current = getattr(module, leaf, None) if module is not None else None
        if isinstance(current, torch.Tensor) and current.shape != saved.shape:
            fresh = torch.empty(saved.shape, dtype=current.dtype)
            if isinstance(current, nn.Parameter):
                setattr(module, leaf, nn.Parameter(fresh, requires_grad=current.requires_grad))
            else:
                module.register_buffer(leaf, fresh)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise DistillError(
            f"{path} does not fit the model ({str(err).splitlines()[-1].strip()[:200]}); build the model "
            "the pruned one came from"
        ) from None
    return model
