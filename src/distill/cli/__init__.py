"""The ``distill`` command: a thin typer shell over :mod:`distill.api`.

User errors print one line to stderr and exit with code 2, without a traceback. An interrupted command
(SIGINT, SIGTERM) prints one line and exits with 130 or 143.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from distill.errors import DistillError, TrainingInterrupted, one_line

app = typer.Typer(
    name="distill",
    help="Knowledge distillation: train small, fast students from large teachers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion [bash|zsh|fish|powershell]
)
err_console = Console(stderr=True)


def versions() -> str:
    """``distill X, torch Y``: distill's version from the installed package's metadata."""
    import torch

    try:
        mine = metadata.version("distill")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        mine = "unknown (not installed)"
    return f"distill {mine}, torch {torch.__version__}"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(versions())
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="print distill's and torch's versions and exit",
        ),
    ] = False,
) -> None:
    """Knowledge distillation: train small, fast students from large teachers."""


def _register_commands() -> None:
    """Import every module of this package: each registers its commands on ``app`` (one module per command
    group; ``commands.py`` holds the core ones)."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_register_commands()


def _error(message: str) -> None:
    """One line on stderr: ``error: <message>`` (no markup interpretation of the message), at most
    :data:`~distill.errors.MAX_MESSAGE` characters (a long path or state-dict diff is cut in the middle)."""
    line = one_line(message)
    err_console.print(Text.assemble(("error: ", "bold red"), line), highlight=False, soft_wrap=True)


def _usage_line(err: Exception) -> str:
    """Click's usage error as one line, pointing at the command's ``--help``."""
    message = err.format_message().strip()  # type: ignore[attr-defined]
    ctx = getattr(err, "ctx", None)
    command = getattr(ctx, "command_path", None) or "distill"
    return f"{message} (see `{command} --help`)"


def _quiet_library_notices() -> None:
    """Keep stderr to distill's own lines: torch logs a deprecation notice per class when torchao (which
    transformers and QAT import) registers its enums with ``torch.utils._pytree``."""
    import logging

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``distill`` console script."""
    _quiet_library_notices()
    try:
        # standalone_mode=False: typer returns the exit code of typer.Exit, and turns Ctrl-C into 130
        code = app(args=argv, prog_name="distill", standalone_mode=False)
    except TrainingInterrupted as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
            err_console.print(str(err), highlight=False, soft_wrap=True, markup=False)
        return err.exit_code
    except DistillError as err:
        _error(str(err))
        return 2
    except (OSError, ValueError) as err:  # bad paths, permissions, values that escaped validation
        _error(f"{type(err).__name__}: {err}")
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except typer.Exit as done:
        return done.exit_code
    except SystemExit as done:  # typer's --show-completion / --install-completion end with sys.exit
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    except Exception as err:  # usage errors and aborts (typer may bundle its own copy of click)
        show, code = getattr(err, "show", None), getattr(err, "exit_code", None)
        if callable(show) and isinstance(code, int):
            if type(err).__name__ == "NoArgsIsHelpError" or not hasattr(err, "format_message"):
                show()  # `distill` alone prints the help
                return code
            _error(_usage_line(err))
            return code
        if type(err).__name__ == "Abort":
            return 1
        raise
    if isinstance(code, int) and code:
        if code == 130:
            err_console.print("interrupted")
        return code
    return 0


def run() -> None:
    sys.exit(main())
