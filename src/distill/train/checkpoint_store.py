"""The checkpoint store (:class:`CheckpointStore`): safetensors files plus a JSON manifest; no pickle
anywhere.

Layout of ``<run>/checkpoints/``::

    manifest.json                 which checkpoints exist, newest first, with SHA-256 and step
    last-00001200.safetensors     trainable module (``model.*``) + optimizer tensors (``optim.*``);
    last-00000800.safetensors     the step counters and optimizer settings are JSON in the header
    best-00001000.safetensors     the best evaluation so far (no optimizer state)

Every file is written to a temporary name, fsynced, renamed, and the directory fsynced; only then does
the manifest (written the same way) name it, and only after that are files that dropped out of the
manifest deleted. A crash at any instant therefore leaves a manifest naming complete, verified files.
Loading checks each file against the manifest's checksum; a corrupt or truncated newest ``last`` is
reported and the previous one (``keep_last`` are kept) is used instead.

The manifest is checked, not trusted: its structure and every name (a plain ``<kind>-<step>[-<n>]
.safetensors`` in this folder) are validated, or nothing is done. A file is never re-written: a second
save at the same step (after an evaluation) gets the next free ``-<n>`` name. A file is deleted only when
an entry that leaves the manifest vouches for it with a matching checksum, or, for unlisted files (a
kill's leftovers), only when every listed file verifies. A missing manifest is rebuilt in memory from
the files' own headers (each holds its JSON state, ``global_step`` included).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from distill.errors import DistillError
from distill.io import (
    atomic_write,
    file_sha256,
    remove_stale_temporaries,
    write_error,
    write_json,
)
from distill.train.flatten import flatten_state, state_tensors
from distill.train.manifest import FORMAT, KINDS, manifest_problem, parse_name, rebuild

MANIFEST = "manifest.json"


def _listed(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return list(manifest["last"]) + ([manifest["best"]] if manifest.get("best") else [])


@dataclass
class Loaded:
    """A verified checkpoint: tensors (with prefixes), its JSON state, its file, and what was skipped.

    ``recovered``: there was no manifest; the list was rebuilt from the files' own headers.
    """

    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    path: Path
    skipped: list[str] = field(default_factory=list)
    recovered: bool = False


class CheckpointStore:
    """The checkpoints of one run directory (see the module docstring for the layout and guarantees)."""

    def __init__(self, directory: str | Path, keep_last: int = 2) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        # file name -> (size, mtime_ns, sha256): a file this process wrote or checked is read once
        self._checksums: dict[str, tuple[int, int, str]] = {}
        self._rebuilt: tuple[list[Any], dict[str, Any] | None] | None = None

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    # ---------------------------------------------------------------- manifest
    def manifest(self) -> dict[str, Any]:
        """The manifest (``{"format", "last": [...], "best": {...} | None}``), its structure and names
        validated. Without ``manifest.json`` it is rebuilt from the checkpoint files (``"recovered"``),
        or read from the first layout (``"legacy"``); empty if there are none."""
        empty: dict[str, Any] = {"format": FORMAT, "last": [], "best": None}
        path = self.manifest_path
        if not path.is_file():
            return self._rebuild() or self._legacy() or empty
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DistillError(
                f"checkpoint manifest {path} is unreadable ({type(err).__name__}); delete it to rebuild "
                "the list from the checkpoint files (--resume does), or start the run again with --overwrite"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DistillError(
                f"checkpoint manifest {path} is not a distill manifest (format {FORMAT}); delete it to "
                "rebuild the list from the checkpoint files (--resume does), or start the run again "
                "with --overwrite"
            )
        problem = manifest_problem(data)
        if problem:
            raise DistillError(
                f"checkpoint manifest {path} is damaged ({problem}); nothing was deleted: delete it to "
                "rebuild the list from the checkpoint files' own headers (--resume does), or start the "
                "run again with --overwrite"
            )
        return {"format": FORMAT, "last": list(data.get("last", [])), "best": data.get("best")}

    def _rebuild(self) -> dict[str, Any] | None:
        """The list a lost ``manifest.json`` held, rebuilt from the files (see :func:`rebuild`)."""
        if not self.directory.is_dir():
            return None
        files = sorted(p for p in self.directory.glob("*.safetensors") if parse_name(p.name))
        listing = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        if self._rebuilt is None or self._rebuilt[0] != listing:
            self._rebuilt = (listing, rebuild(files, self._checksum))
        return self._rebuilt[1]

    def _legacy(self) -> dict[str, Any] | None:
        """Runs written before the manifest existed: ``<tag>.safetensors`` + ``<tag>.json``."""
        found: dict[str, Any] = {"format": FORMAT, "last": [], "best": None, "legacy": True}
        for kind in KINDS:
            meta, weights = self.directory / f"{kind}.json", self.directory / f"{kind}.safetensors"
            if meta.is_file() and weights.is_file():
                try:
                    state = json.loads(meta.read_text())
                except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                    continue
                entry = {
                    "file": weights.name,
                    "sha256": state.get("sha256"),
                    "legacy_state": meta.name,
                }
                if kind == "last":
                    found["last"] = [entry]
                else:
                    found["best"] = entry
        return found if found["last"] or found["best"] else None

    def entries(self, kind: str) -> list[dict[str, Any]]:
        """Manifest entries of ``kind``, newest first."""
        manifest = self.manifest()
        if kind == "last":
            return list(manifest["last"])
        return [manifest["best"]] if manifest.get("best") else []

    def has(self, kind: str) -> bool:
        return bool(self.entries(kind))

    def _checksum(self, path: Path) -> str:
        stat = path.stat()
        cached = self._checksums.get(path.name)
        if cached is not None and cached[:2] == (stat.st_size, stat.st_mtime_ns):
            return cached[2]
        sha = file_sha256(path)
        self._checksums[path.name] = (stat.st_size, stat.st_mtime_ns, sha)
        return sha

    def _vouched(self, entry: dict[str, Any]) -> bool:
        """Whether ``entry``'s file is here and matches the checksum the entry records."""
        path = self.directory / entry["file"]
        try:
            return bool(entry.get("sha256")) and self._checksum(path) == entry["sha256"]
        except OSError:
            return False

    def _unused_path(self, kind: str, step: int, manifest: dict[str, Any]) -> Path:
        """``<kind>-<step>.safetensors``, or the first free ``-<n>`` name when that one is listed or on
        disk: a save never re-writes a file the manifest vouches for, nor one it does not know."""
        listed = {entry["file"] for entry in _listed(manifest)}
        n = 0
        while True:
            name = f"{kind}-{step:08d}" + (f"-{n}" if n else "") + ".safetensors"
            if name not in listed and not (self.directory / name).exists():
                return self.directory / name
            n += 1

    # -------------------------------------------------------------------- save
    def save(
        self,
        kind: str,
        model: nn.Module,
        state: dict[str, Any],
        optimizer: torch.optim.Optimizer | None = None,
        extra: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write a ``kind`` checkpoint of ``model`` (+ optimizer, + ``extra`` tensors under their own
        prefixed names, e.g. the weight average) with JSON ``state``; returns its path."""
        if kind not in KINDS:
            raise ValueError(f"checkpoint kind must be one of {KINDS}, got {kind!r}")
        tensors = state_tensors(model.state_dict(), "model.")
        tensors.update(extra or {})
        record = dict(state)
        if optimizer is not None:
            record["optimizer"] = flatten_state(optimizer.state_dict(), "optim", tensors)
        step = int(state.get("global_step", 0))
        header = {"distill": json.dumps(record, default=str)}
        try:
            manifest = self.manifest()
            manifest.pop("legacy", None)
            manifest.pop("recovered", None)
            path = self._unused_path(kind, step, manifest)
            atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
            entry = {
                "file": path.name,
                "sha256": self._checksum(path),
                "bytes": path.stat().st_size,
                "step": step,
                "epoch": state.get("epoch"),
                "time": round(time.time(), 3),
            }
            if (
                kind == "last"
            ):  # an entry whose file is gone or differs leaves the list (its file stays)
                kept = [entry] + [e for e in manifest["last"] if self._vouched(e)]
                manifest["last"], dropped = kept[: self.keep_last], kept[self.keep_last :]
            else:
                old = manifest.get("best")
                manifest["best"], dropped = entry, [old] if old else []
            write_json(self.manifest_path, manifest)
        except (OSError, SafetensorError) as err:
            raise write_error(err, self.directory, f"{kind} checkpoint") from None
        in_use = {e["file"] for e in _listed(manifest)}
        for old in dropped:
            if old["file"] not in in_use and self._vouched(old):
                (self.directory / old["file"]).unlink(missing_ok=True)
                if old.get("legacy_state"):
                    (self.directory / old["legacy_state"]).unlink(missing_ok=True)
        return path

    # -------------------------------------------------------------------- load
    def load(self, kind: str, fallback: bool = True) -> Loaded:
        """Read and verify the newest good ``kind`` checkpoint.

        With ``fallback`` a missing, corrupt or truncated file is skipped (and listed in
        ``Loaded.skipped``) in favour of the next older one; without it the first problem raises.
        """
        manifest = self.manifest()
        best = [manifest["best"]] if manifest.get("best") else []
        entries = list(manifest["last"]) if kind == "last" else best
        if not entries:
            raise DistillError(
                f"no {kind!r} checkpoint in {self.directory}; train first or pick a run dir with checkpoints"
            )
        skipped: list[str] = []
        for entry in entries:
            path = self.directory / entry["file"]
            try:
                tensors, state = self._read(path, entry)
            except DistillError as err:
                if not fallback:
                    raise
                skipped.append(str(err))
                continue
            return Loaded(tensors, state, path, skipped, bool(manifest.get("recovered")))
        listed = {e["file"] for e in _listed(manifest)}
        unlisted = [p for p in self.directory.glob(f"{kind}-*.safetensors") if p.name not in listed]
        fix = (
            f"{len(unlisted)} {kind!r} file(s) it does not list are here: delete "
            f"{self.manifest_path} to rebuild the list from them, or start the run again with --overwrite"
            if unlisted and self.manifest_path.is_file()
            else "start the run again with --overwrite"
        )
        raise DistillError(
            f"every {kind!r} checkpoint in {self.directory} is damaged ({'; '.join(skipped)}); {fix}"
        )

    def _read(
        self, path: Path, entry: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if not path.is_file():
            raise DistillError(f"checkpoint {path} is missing")
        if entry.get("sha256") and file_sha256(path) != entry["sha256"]:
            raise DistillError(
                f"checkpoint {path} does not match its recorded checksum (corrupt or truncated)"
            )
        try:
            tensors = load_file(str(path))
            if entry.get("legacy_state"):
                state = json.loads((self.directory / entry["legacy_state"]).read_text())
            else:
                with safe_open(str(path), "pt") as f:
                    state = json.loads((f.metadata() or {})["distill"])
        except (SafetensorError, OSError, KeyError, ValueError) as err:
            raise DistillError(f"checkpoint {path} is unreadable ({type(err).__name__})") from None
        return tensors, state

    def cleanup(self) -> list[Path]:
        """Remove stale temporaries and the checkpoint files the manifest does not name (a kill's
        leftovers: older than what it lists, or newer and about to be trained again).

        Unlisted files are removed only when the manifest lists something and every listed file matches
        its checksum; otherwise they may be the real checkpoints (a damaged manifest) and all stay.
        """
        removed = remove_stale_temporaries(self.directory)
        if not self.manifest_path.is_file():
            return removed
        listed = _listed(self.manifest())
        if not listed or not all(self._vouched(entry) for entry in listed):
            return removed
        named = {entry["file"] for entry in listed}
        for path in sorted(self.directory.glob("*.safetensors")):
            if parse_name(path.name) and path.name not in named and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed
