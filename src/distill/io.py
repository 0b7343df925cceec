"""Files written whole: to a temporary name, fsynced, renamed over the target and the directory fsynced, so a
crash at any instant leaves either the old file or the new one, never a part."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.errors import DistillError


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems (and Windows) cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)``, fsync, rename onto ``path`` and fsync the directory.

    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON (values JSON does not know as their ``str``) with a final newline."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """``text`` as a UTF-8 file, written whole (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete ``.*.tmp`` files a killed process left behind in ``directory``; returns them."""
    directory = Path(directory)
    stale = sorted(directory.glob(".*.tmp")) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_error(err: OSError, where: Path, what: str) -> DistillError:
    """A one-line error for a failed write: disk full, read-only or permission problems named plainly."""
    reason = {
        errno.ENOSPC: "the disk is full; free space or point the run somewhere else",
        errno.EDQUOT: "the disk quota is exhausted; free space or point the run somewhere else",
        errno.EROFS: "the file system is read-only; point the run at a writable directory",
        errno.EACCES: "permission denied; fix the permissions or point the run somewhere else",
        errno.EPERM: "permission denied; fix the permissions or point the run somewhere else",
    }.get(err.errno or -1, f"{err.strerror or err}; check the path or point the run somewhere else")
    return DistillError(
        f"cannot write {what} in {where}: {reason} (nothing partial was left behind)"
    )
