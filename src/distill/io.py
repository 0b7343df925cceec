"""Files written whole: to a temporary name, fsynced, renamed over the target and the directory fsynced, so a
crash at any instant leaves either the old file or the new one, never a part."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

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


def _new_file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open()`` gives a new file."""
    try:  # Linux: read it without changing it (os.umask sets it, racing other threads)
        with open("/proc/self/status", encoding="ascii") as f:
            line = next(line for line in f if line.startswith("Umask:"))
        mask = int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def follow_umask(folder: Path) -> None:
    """Give every file under ``folder`` the mode of a new file (``0o666`` less the umask): writers
    such as safetensors create theirs private (``0o600``)."""
    mode = _new_file_mode()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)``, fsync, rename onto ``path`` and fsync the directory.

    The file gets the mode of any new file (``0o666`` less the umask), not ``mkstemp``'s ``0o600``, so a
    shared run directory is readable throughout. On any failure the temporary file is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, _new_file_mode())
        write(tmp)
        # a writer may replace the file (safetensors >= 0.8 writes its own private file): mode it again
        os.chmod(tmp, _new_file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoints, caches, exported models)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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


def write_error(err: OSError | SafetensorError, where: Path, what: str) -> DistillError:
    """A one-line error for a failed write: disk full, read-only or permission problems named plainly.

    safetensors' own writer raises ``SafetensorError`` (not ``OSError``) with the OS error inside its
    message (``Os { code: 28, kind: StorageFull, ... }``); its code is read from there.
    """
    code = getattr(err, "errno", None)
    if code is None:
        found = re.search(r"code: (\d+)", str(err))
        code = int(found.group(1)) if found else None
    elsewhere = "or set output=... to another folder"
    reason = {
        errno.ENOSPC: f"the disk is full; free space {elsewhere}",
        errno.EDQUOT: f"the disk quota is exhausted; free space {elsewhere}",
        errno.EROFS: "the file system is read-only; set output=... to a writable folder",
        errno.EACCES: f"permission denied; fix the permissions {elsewhere}",
        errno.EPERM: f"permission denied; fix the permissions {elsewhere}",
    }.get(
        code or -1,
        f"{getattr(err, 'strerror', None) or str(err).strip()[:160]}; check the path {elsewhere}",
    )
    return DistillError(
        f"cannot write {what} in {where}: {reason} (nothing partial was left behind)"
    )


def download(url: str, dest: Path, timeout: float = 30.0) -> None:
    """Fetch ``url`` to ``dest`` whole: streamed into a temporary file in the same folder, then renamed,
    so an interrupted download never leaves a partial ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_replaceable(out_dir: Path, marker: str, run_dir: Path, flag: str = "--out") -> None:
    """Refuse an output folder that a command would replace whole unless it is new, empty, or one that
    command wrote before (it holds ``marker``, e.g. ``export.json``): the run folder itself, a folder
    holding the run, or any other folder of files would otherwise be deleted with it."""
    out_dir, run_dir = Path(out_dir), Path(run_dir)
    out_abs, run_abs = out_dir.resolve(), run_dir.resolve()
    if out_abs == run_abs or out_abs in run_abs.parents:
        raise DistillError(
            f"{flag} {out_dir} would replace the run folder {run_dir} (it holds it); give {flag} a "
            f"new folder, e.g. {run_dir / 'out'}, or leave {flag} unset"
        )
    if out_dir.is_dir() and not (out_dir / marker).is_file():
        held = sorted(p.name for p in out_dir.iterdir())
        if held:
            shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            raise DistillError(
                f"{flag} {out_dir} holds other files ({shown}), which replacing it would delete; give "
                f"{flag} a new or empty folder"
            )
