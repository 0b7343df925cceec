"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DistillError(Exception):
    """A problem with the user's input (recipe, data, paths, arguments), not a bug in distill.

    The message names the bad value and says how to fix it.
    """


class ConfigError(DistillError, ValueError):
    """A recipe or override that does not validate."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" Did you mean 'a', 'b'?"`` for close matches of ``name``, or ``""``."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not close:
        lowered = name.lower()
        close = [c for c in choices if lowered in c.lower() or c.lower() in lowered][:n]
    if not close:
        return ""
    return " Did you mean " + ", ".join(repr(c) for c in close) + "?"


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first non-blank line of ``err``'s message (its type name when it has none), cut to ``limit``
    characters: how an underlying library's error is quoted inside a one-line :class:`DistillError`."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:limit]
