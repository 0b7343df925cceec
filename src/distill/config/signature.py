"""Check keyword arguments against a constructor's signature before calling it."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from distill.errors import ConfigError, did_you_mean


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
    """Raise :class:`ConfigError` for any key in ``kwargs`` that ``fn`` does not accept."""
    names, var_kw = accepted_kwargs(fn)
    if var_kw:
        return
    allowed = [n for n in names if n not in skip]
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(
                f"{what} has no option {key!r}.{did_you_mean(key, allowed)} "
                f"Accepted: {', '.join(allowed) or '(none)'}"
            )
