"""Capture intermediate tensors by module name with forward hooks: no model surgery.

>>> with FeatureTaps(model, ["layer2", "layer3:in"]) as taps:
...     logits = model(x)
>>> taps["layer2"].shape  # output of model.layer2
>>> taps["layer3:in"]     # first positional input of model.layer3

Hooks exist only inside the ``with`` block and are removed on exit, also when the forward raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from distill.errors import DistillError, did_you_mean

INPUT_SUFFIX = ":in"


class TapError(DistillError):
    """A tap that names no module of the model, or a tap that captured nothing."""


def split_tap(name: str) -> tuple[str, bool]:
    """``"layer3:in"`` -> ``("layer3", True)``; ``"layer3"`` -> ``("layer3", False)``."""
    if name.endswith(INPUT_SUFFIX):
        return name[: -len(INPUT_SUFFIX)], True
    return name, False


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` with an error that lists close module names."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise TapError(
            f"tap {name!r} names no module of {type(model).__name__}.{did_you_mean(name, names)} "
            f"Module names look like: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}"
        ) from None


def _first_tensor(value: object) -> torch.Tensor | object:
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return value


class FeatureTaps(Mapping[str, torch.Tensor]):
    """Context manager that records module outputs (or inputs, with ``":in"``) by name.

    All names are checked when the object is created, so a typo fails before any compute.
    If a module runs several times in one forward, the last call wins.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], detach: bool = False) -> None:
        self.model = model
        self.names = list(dict.fromkeys(names))
        self.detach = detach
        self._modules = {n: resolve_module(model, split_tap(n)[0]) for n in self.names}
        self._captured: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str, want_input: bool):
        def record(value: object) -> None:
            value = _first_tensor(value)
            if isinstance(value, torch.Tensor):
                # a copy: a later in-place op (ReLU(inplace=True) after a BN) must not change what was
                # tapped; the copy stays in the autograd graph, so gradients still reach the model
                value = (value.detach() if self.detach else value).clone()
            self._captured[name] = value  # type: ignore[assignment]

        if want_input:  # a pre-hook sees the input before the module can modify it in place

            def pre_hook(module: nn.Module, args: tuple) -> None:
                record(args)

            return pre_hook

        def hook(module: nn.Module, args: tuple, output: object) -> None:
            record(output)

        return hook

    def __enter__(self) -> FeatureTaps:
        self._captured.clear()
        try:
            for name, module in self._modules.items():
                want_input = split_tap(name)[1]
                hook = self._hook(name, want_input)
                register = (
                    module.register_forward_pre_hook if want_input else module.register_forward_hook
                )
                self._handles.append(register(hook))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._captured:
            if name in self._modules:
                raise TapError(
                    f"tap {name!r} captured nothing: module {split_tap(name)[0]!r} did not run in "
                    "this forward pass; tap a module that runs"
                )
            raise KeyError(name)
        return self._captured[name]

    def get(self, name: str, default: object = None) -> torch.Tensor | object:
        return self._captured.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._captured

    def __iter__(self) -> Iterator[str]:
        return iter(self._captured)

    def __len__(self) -> int:
        return len(self._captured)
