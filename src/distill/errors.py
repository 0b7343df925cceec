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


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT or SIGTERM. ``step`` is the step of the ``last`` checkpoint it can be resumed
    from (None: there is none). The CLI prints one line and exits with ``128 + signum`` (130, 143)."""

    def __init__(
        self, signum: int, step: int | None, command: str = "distill train <recipe>"
    ) -> None:
        super().__init__(signum, step)
        self.signum, self.step, self.command = signum, step, command

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        if self.step is None:
            return (
                "interrupted before the first checkpoint; nothing was kept, the run folder is as it "
                f"was; start again with: {self.command}"
            )
        return f"interrupted at step {self.step}; resume with: {self.command} --resume"


MAX_MESSAGE = 400  # characters of an error line; longer ones (a path, a state-dict diff) are cut
_ALLOCATION = (
    "can't allocate memory",
    "cannot allocate memory",
    "out of memory",
    "storage size calculation overflowed",
    "overflow when unpacking long",
)


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` on one line (whitespace runs collapsed), cut to ``limit`` characters with an ellipsis
    in the middle, so both the start (what failed) and the end (the fix) survive."""
    line = " ".join(message.split())
    if len(line) <= limit:
        return line
    keep = limit - 5
    return f"{line[: keep - keep // 3]} ... {line[len(line) - keep // 3 :]}"


def is_allocation_failure(err: BaseException) -> bool:
    """Whether ``err`` is a tensor that does not fit in memory: ``MemoryError``, CUDA/CPU out of
    memory (``torch.OutOfMemoryError`` is a ``RuntimeError``), or a size whose byte count overflows."""
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(phrase in text for phrase in _ALLOCATION)
