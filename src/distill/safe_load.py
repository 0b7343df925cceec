"""Reading PyTorch pickle files without running code from them.

Every ``.pt``/``.pth``/``.bin`` file distill reads goes through :func:`torch_load`:
``torch.load(weights_only=True)``, whose unpickler builds only tensors, containers, numbers and strings,
plus the classes a caller allows. A file that needs anything else (a pickled ``os.system`` call, a class
from an unknown module) is refused with a :class:`DistillError` that says it needs arbitrary unpickling,
which is different from a file that is merely corrupt.

Allowed classes (:func:`bare_classes`) may only be *rebuilt* the way pickle rebuilds any object (a bare
instance, then its saved attributes): the file cannot call them, so their constructors never run with
arguments the file chose.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from distill.errors import DistillError

# phrases of torch's weights-only unpickler when a file asks for more than it may build
_REFUSALS = (
    "Unsupported global",
    "Trying to call reduce",
    "Can only create new object",
    "is blocked",
    "Unsupported class",
    "which belongs to",
    "not an allowed global",
)


def needs_unpickling(err: BaseException) -> bool:
    """Whether ``err`` is torch's weights-only unpickler refusing a file that needs arbitrary unpickling."""
    text = str(err)
    return "Weights only load failed" in text and any(p in text for p in _REFUSALS)


def refusal_detail(err: BaseException) -> str:
    """The one line of a weights-only refusal that names what the file asked for."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if any(p in line for p in _REFUSALS)]
    return (named or lines or [type(err).__name__])[0][:200]


class _Bare:
    """Stands in for an allowed class under its pickle name: pickle's NEWOBJ gets a bare instance of the
    class (``cls.__new__``, no ``__init__``); a call from the file (REDUCE: the constructor with the
    file's arguments) is refused."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.__new__ = lambda _self, *args: cls.__new__(cls)  # what NEWOBJ calls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise torch.serialization.pickle.UnpicklingError(
            f"Trying to call reduce for {self.cls.__qualname__}(...), which is not an allowed global"
        )


def bare_classes(classes: Iterable[type], aliases: dict[str, type] | None = None) -> list[Any]:
    """``torch.serialization.safe_globals`` entries that let a file rebuild ``classes`` but not call them.

    Each class is listed twice: a :class:`_Bare` stand-in under its pickle name (what the file can
    reach), and the class itself under a name no pickle can spell (it holds a line break), so the
    unpickler accepts the rebuilt instance's saved attributes. ``aliases`` maps old pickle names to
    classes (a renamed class in files written by older versions).
    """
    entries: list[Any] = []
    named = {f"{c.__module__}.{c.__qualname__}": c for c in classes}
    named.update(aliases or {})
    for name, cls in named.items():
        entries.append((_Bare(cls), name))
    for cls in set(named.values()):
        entries.append((cls, f"distill\nrebuilt\n{cls.__module__}.{cls.__qualname__}"))
    return entries


def torch_load(path: str | Path, what: str, fix: str, allowed: Iterable[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, allowing only ``allowed`` globals.

    ``what`` names the file in errors (``"teacher weights"``); ``fix`` ends its errors (how to re-save
    the file as plain data).
    """
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - anything the restricted unpickler refuses
        if needs_unpickling(err):
            raise DistillError(
                f"{what} {path}: the file needs arbitrary unpickling, which can run code, so distill "
                f"refuses it (torch.load(weights_only=True): {refusal_detail(err)}); if you trust the file, {fix}"
            ) from None
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise DistillError(
            f"{what} {path}: the file is corrupt or not a PyTorch file ({first}); {fix}"
        ) from None


_STRINGS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "SHORT_BINSTRING",
    "BINSTRING",
    "STRING",
}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def pickle_globals(stream: BinaryIO) -> set[str] | None:
    """Every ``module.name`` a pickle stream would import, read without unpickling it
    (``pickletools.genops``); None when it names one in a way this reader cannot follow (a global from
    computed strings, the copyreg extension registry), which callers treat as unsafe. A stream that
    breaks off (truncated, not a pickle) is read up to the break, where unpickling would stop too."""
    from pickletools import genops

    ops = genops(stream)

    found: set[str] = set()
    pushed: list[Any] = []  # the values of the last pushes, where known (strings), else None
    memo: dict[Any, Any] = {}
    while True:
        try:
            op, arg, _ = next(ops)
        except (StopIteration, ValueError):
            return found
        name = op.name
        if name in ("GLOBAL", "INST"):
            found.add(str(arg).replace(" ", "."))
        elif name == "STACK_GLOBAL":
            if len(pushed) < 2 or not all(isinstance(v, str) for v in pushed[-2:]):
                return None
            found.add(f"{pushed[-2]}.{pushed[-1]}")
        elif name.startswith("EXT"):
            return None
        if name in _STRINGS:
            pushed.append(arg)
        elif name in _GETS:
            pushed.append(memo.get(arg))
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in _PUTS:
            memo[arg] = pushed[-1] if pushed else None
        elif name not in ("FRAME", "PROTO"):
            pushed.append(None)  # anything else: what is on top of the stack is no longer known
