"""The run folder while a training starts: an exclusive lock, and a start that can be undone.

**Lock.** ``<run>/.lock`` is held with ``flock`` by the one process that trains there (rank 0 under
``torchrun``) for the whole training; it names that process (pid, host, start time, command) for the
refusal another start gets (it is emptied on release). The operating system releases it when the process ends, however it ends,
so there are no stale locks to clean up. Where ``fcntl`` is missing (Windows) ``msvcrt`` locks the first
byte instead, and without either the folder is not locked. A process that already holds the lock may
take it again (``distill train`` takes it before building, ``Trainer.fit`` takes it too).

**Start.** :class:`RunStart` makes a new run replace what the folder held only once the new run has
saved its first ``last`` checkpoint. Until then the earlier artefacts (:data:`ARTEFACTS`: an earlier
run's checkpoints, metrics, summary, weights, recipe) wait in ``<run>/.overwrite-backup/``; a start that
fails (an error, an interruption) deletes what it wrote and moves them back byte for byte, and a folder
the start created is removed again. Each step is a rename inside the run folder, in an order a crash can
resume from: ``checkpoints`` moves aside first and back last, so a folder whose ``checkpoints`` holds a
``last`` checkpoint next to a backup means the new run got that far (the backup is deleted), and one
without means it did not (the backup is put back); ``.restoring`` in the backup marks a put-back under
way. The next start under the lock finishes whatever a killed process left.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from distill.errors import DistillError
from distill.train.checkpoint import CheckpointStore

LOCK_NAME = ".lock"
BACKUP_NAME = ".overwrite-backup"
RESTORING = ".restoring"
# what a run writes into its folder; ``checkpoints`` first (see the module docstring)
ARTEFACTS = (
    "checkpoints",
    "metrics.jsonl",
    "metrics.csv",
    "summary.json",
    "tensorboard",
    "model.safetensors",
    "recipe.yaml",
    "curves.png",
    "MODEL_CARD.md",
    "eval.json",
    "confusion.png",
)

_HELD: dict[str, list[Any]] = {}  # resolved lock path -> [open file, times taken] in this process


def _lock_file(handle: IO[str]) -> bool:
    """Try to lock ``handle`` without waiting; False if another process holds it."""
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    if fcntl is not None:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    try:
        import msvcrt
    except ImportError:  # neither: the folder is not locked
        return True
    try:
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _holder(path: Path, wait: float = 2.0) -> str:
    """Who holds the lock, as its holder wrote it. The holder writes that line just after it takes the
    lock, so a start refused in between waits up to ``wait`` seconds for it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            text = " ".join(path.read_text(encoding="utf-8").split())
        except OSError:
            text = ""
        if text or time.monotonic() >= deadline:
            return text or "another process"
        time.sleep(0.05)


def _program() -> str:
    """``distill``, ``python -m distill`` or the script's name: how the user started this process."""
    first = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    return f"python -m {first.parent.name}" if first.name == "__main__.py" else first.name


class RunLock:
    """Exclusive lock on a run folder (``<run>/.lock``); a context manager. Creates the folder."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._key: str | None = None
        self.new_file = False  # the lock file did not exist before acquire()

    def acquire(self) -> RunLock:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            key = str(self.path.resolve())
            if key in _HELD:  # this process holds it already
                _HELD[key][1] += 1
                self._key = key
                return self
            self.new_file = not self.path.exists()
            while True:
                handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
                if not _lock_file(handle):
                    handle.close()
                    raise DistillError(
                        f"run directory {self.run_dir} is in use by another training "
                        f"({_holder(self.path)}); wait for it to finish, or set output=... to another folder"
                    )
                try:  # the file may have been removed (a failed start's folder) while we waited on it
                    if os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                        break
                except FileNotFoundError:
                    pass
                handle.close()
            handle.seek(0)
            handle.truncate()
            started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
            command = " ".join([_program(), *sys.argv[1:]])
            handle.write(
                f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}\n"
            )
            handle.flush()
        except OSError as err:
            raise DistillError(
                f"cannot lock run directory {self.run_dir}: {err.strerror or err}; "
                "set output=... to a writable folder"
            ) from None
        _HELD[key] = [handle, 1]
        self._key = key
        return self

    def release(self) -> None:
        if self._key is None:
            return
        held = _HELD[self._key]
        held[1] -= 1
        if held[1] == 0:
            try:  # an empty lock file: nobody trains here
                held[0].seek(0)
                held[0].truncate()
            except OSError:
                pass
            held[0].close()  # closing the file releases the lock
            del _HELD[self._key]
        self._key = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def has_last_checkpoint(run_dir: Path) -> bool:
    try:
        return CheckpointStore(run_dir / "checkpoints").has("last")
    except DistillError:  # a damaged manifest: there is no usable checkpoint
        return False


def check_writable(run_dir: Path) -> None:
    """Fail before anything is written or moved when ``run_dir`` (or a folder it needs) cannot be written."""
    try:
        _check_writable(run_dir)
    except OSError as err:  # e.g. a name over the file system's limit (ENAMETOOLONG)
        raise DistillError(
            f"cannot create run directory (output, {err.strerror or err}): {run_dir}; set output=... "
            "to a shorter, writable folder"
        ) from None


def _check_writable(run_dir: Path) -> None:
    if run_dir.is_symlink() and not run_dir.exists():
        raise DistillError(
            f"output {run_dir} is a link to {os.readlink(run_dir)}, which does not exist; create "
            "that folder or set output=... to another folder"
        )
    existing = run_dir
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise DistillError(
            f"cannot create run directory {run_dir}: {existing} is a file; set output=... to a folder"
        )
    folders = [existing]
    if existing == run_dir:  # an earlier run's folders move aside: they must be writable too
        folders += [run_dir / n for n in ARTEFACTS if (run_dir / n).is_dir()]
    for folder in folders:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DistillError(
                f"cannot write to {folder}: permission denied; set output=... to a writable folder"
            )


def check_not_foreign(run_dir: Path, lock_was_new: bool) -> None:
    """Refuse a folder holding files with a run's names (``recipe.yaml``, ``summary.json``...) that no
    distill start wrote: every start creates ``.lock`` before it writes anything, and a start that fails
    removes the lock file it created, so such files without an earlier ``.lock`` or ``checkpoints`` are
    the user's own (a recipe written as ``recipe.yaml`` next to ``output=.``). A new run would replace
    them and delete them with its first checkpoint."""
    if not lock_was_new or (run_dir / "checkpoints").exists():
        return
    theirs = [n for n in ARTEFACTS if (run_dir / n).exists() or (run_dir / n).is_symlink()]
    if theirs:
        raise DistillError(
            f"output {run_dir} holds {', '.join(theirs)} that no distill run wrote there, and a run "
            "would replace them; set output=... to a new or empty folder, or move those files"
        )


def recover(run_dir: Path) -> str | None:
    """Finish what a killed start left (see the module docstring); a note on what was done, or None."""
    backup = run_dir / BACKUP_NAME
    if not backup.is_dir():
        return None
    if not (backup / RESTORING).exists() and has_last_checkpoint(run_dir):
        shutil.rmtree(
            backup
        )  # the new run reached its first checkpoint: the earlier one is replaced
        return f"removed the earlier run an interrupted --overwrite had set aside in {backup}"
    _put_back(run_dir, backup)
    return f"restored the earlier run an interrupted --overwrite had set aside in {backup}"


def _put_back(run_dir: Path, backup: Path) -> None:
    if not (backup / RESTORING).exists():
        for name in ARTEFACTS:  # what the failed start wrote
            _remove(run_dir / name)
        (backup / RESTORING).touch()
    for name in reversed(ARTEFACTS):  # checkpoints last
        if (backup / name).exists() or (backup / name).is_symlink():
            os.replace(backup / name, run_dir / name)
    shutil.rmtree(backup)


class RunStart:
    """The run folder from before the build to the new run's first ``last`` checkpoint (a context manager).

    ``__enter__`` checks the folder can be written, creates it, takes the lock and finishes a killed start;
    :meth:`begin` (after the build, before anything is written) moves an earlier run's artefacts aside;
    :meth:`commit` (the first ``last`` checkpoint is saved) deletes them. Leaving the block with an
    exception before :meth:`commit` puts the folder back as it was. A continued run (``resume`` with a
    ``last`` checkpoint) has nothing to undo. ``main=False`` (ranks other than 0) does nothing.
    """

    def __init__(self, run_dir: str | Path, resume: bool = False, main: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.main = main
        self.lock = RunLock(self.run_dir)
        self.created: list[Path] = []
        self.notes: list[str] = []
        self.committed = False
        self._begun = False

    def __enter__(self) -> RunStart:
        if not self.main:
            return self
        check_writable(self.run_dir)
        missing = self.run_dir
        while not missing.exists():
            self.created.append(missing)
            missing = missing.parent
        try:
            self.lock.acquire()
            note = recover(self.run_dir)
        except BaseException:
            self._remove_created()
            raise
        if note:
            self.notes.append(note)
        return self

    def begin(self) -> None:
        """Move an earlier run's artefacts aside (nothing to do when continuing a run)."""
        if not self.main or self._begun:
            return
        self._begun = True
        if self.resume and has_last_checkpoint(self.run_dir):
            self.committed = True
            return
        present = [n for n in ARTEFACTS if (self.run_dir / n).exists()]
        if not present:
            return
        backup = self.run_dir / BACKUP_NAME
        backup.mkdir()
        for name in present:  # checkpoints first
            os.replace(self.run_dir / name, backup / name)

    def commit(self, kind: str = "last") -> None:
        """The new run saved a checkpoint: from its first ``last`` on, it replaces the earlier run."""
        if not self.main or self.committed or kind != "last":
            return
        self.committed = True
        shutil.rmtree(self.run_dir / BACKUP_NAME, ignore_errors=True)  # a leftover: see recover()

    def rollback(self) -> None:
        """Put the folder back as the start found it."""
        backup = self.run_dir / BACKUP_NAME
        if backup.is_dir():
            _put_back(self.run_dir, backup)
        elif self._begun or self.created:
            for name in ARTEFACTS:
                _remove(self.run_dir / name)
        self._remove_created()

    def _remove_created(self) -> None:
        if not self.created:
            return
        self.lock.release()
        try:
            (self.run_dir / LOCK_NAME).unlink(missing_ok=True)
            for folder in self.created:  # deepest first; only if nothing else was put there
                folder.rmdir()
        except OSError:
            pass

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if kind is not None and self.main and not self.committed:
                self.rollback()
                if self.lock.new_file:  # nothing of this start stays behind, not even the lock file
                    (self.run_dir / LOCK_NAME).unlink(missing_ok=True)
        finally:
            self.lock.release()
