"""A generic name -> object registry with definition-site registration and did-you-mean errors, and the
check of keyword arguments against a constructor's signature that every registry's ``create`` runs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from distill.errors import ConfigError, DistillError, did_you_mean

T = TypeVar("T")


class UnknownNameError(DistillError, KeyError):
    """A name that is not in a registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """One registry per kind of thing (losses, models, tasks, datasets...).

    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register("kd")
    ... class KDLoss(nn.Module): ...
    >>> LOSSES.get("kd")
    """

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or (kind + "es" if kind.endswith("s") else kind + "s")
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; ``meta`` is free-form (paper, year, kind...)."""

        def decorator(obj: T) -> T:
            self.add(name, obj, **meta)
            return obj

        return decorator

    def add(self, name: str, obj: T, **meta: Any) -> None:
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if name in self._items:
            raise ValueError(
                f"{self.kind} {name!r} is already registered (by {self._items[name]!r}); "
                "pick another name"
            )
        self._items[name] = obj
        self._meta[name] = dict(meta)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, self._items)} "
                f"Known {self.plural}: {', '.join(sorted(self._items)) or '(none)'}"
            ) from None

    def create(self, name: str, /, options: Mapping[str, Any] | None = None, **given: Any) -> Any:
        """Call the item registered as ``name`` with ``options`` (the user's keyword arguments, checked
        against its signature: a key it does not accept is a :class:`ConfigError` with near matches)
        and ``given`` (the arguments the caller supplies itself, e.g. ``split``, ``num_classes``)."""
        item = self.get(name)
        options = dict(options or {})
        check_kwargs(item, options, what=f"{self.kind} {name!r}", skip=tuple(given))
        return item(**given, **options)  # type: ignore[operator]

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def accepted_kwargs(fn: Callable[..., Any]) -> tuple[list[str], bool]:
    """Names ``fn`` accepts as keywords, and whether it also takes ``**kwargs``."""
    if inspect.isclass(fn) and fn.__init__ in (object.__init__, _module_init()):
        return [], False  # no constructor of its own: takes no options
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = list(inspect.signature(target).parameters.values())
    if inspect.isclass(fn) and params and params[0].name == "self":
        params = params[1:]
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    return names, var_kw


def _module_init() -> Any:
    import torch.nn

    return torch.nn.Module.__init__


def check_kwargs(
    fn: Callable[..., Any], kwargs: Mapping[str, Any], what: str, skip: tuple[str, ...] = ()
) -> None:
    """Raise :class:`ConfigError` for any key in ``kwargs`` that ``fn`` does not accept (or that is in
    ``skip``: arguments the caller supplies itself)."""
    names, var_kw = accepted_kwargs(fn)
    if var_kw:
        return
    allowed = [n for n in names if n not in skip]
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(
                f"{what} has no option {key!r}.{did_you_mean(key, allowed)} "
                f"Accepted options: {', '.join(allowed) or '(none)'}"
            )
