"""What a checkpoint manifest may say: its structure, and file names that stay inside the folder.

``manifest.json`` is data read back from disk; a damaged or crafted one must never steer a deletion.
Every entry names a plain ``<kind>-<step>[-<n>].safetensors`` file of its kind (no path), with a SHA-256;
entries carried over from the first layout are exactly ``<kind>.safetensors`` with ``<kind>.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

FORMAT = 1
KINDS = ("last", "best")
# <kind>-<step>[-<n>].safetensors: n counts further saves at the same step (before and after evaluation)
CHECKPOINT_NAME = re.compile(r"(last|best)-(\d{8,})(?:-([1-9]\d*))?\.safetensors")
SHA256 = re.compile(r"[0-9a-f]{64}")


def parse_name(name: Any) -> tuple[str, int, int] | None:
    """``(kind, step, n)`` of a checkpoint file name; None for anything else (a path included)."""
    match = CHECKPOINT_NAME.fullmatch(name) if isinstance(name, str) else None
    return (match[1], int(match[2]), int(match[3] or 0)) if match else None


def _shown(value: Any) -> str:
    """A value from a manifest, quoted and cut short, for a one-line error."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _entry_problem(entry: Any, kind: str) -> str | None:
    """What is wrong with a manifest entry of ``kind``; None if nothing."""
    if not isinstance(entry, dict):
        return f"a {kind!r} entry is {_shown(entry)}, not an object"
    name, sha = entry.get("file"), entry.get("sha256")
    if (
        "legacy_state" in entry or name == f"{kind}.safetensors"
    ):  # carried over from the first layout
        if name != f"{kind}.safetensors" or entry.get("legacy_state") != f"{kind}.json":
            return f"{_shown(name)} with {_shown(entry.get('legacy_state'))} is not {kind}.safetensors with {kind}.json"
        if sha is None:
            return None
    elif parse_name(name) is None or parse_name(name)[0] != kind:
        return f"{_shown(name)} is not a {kind}-<step>.safetensors file name"
    if not (isinstance(sha, str) and SHA256.fullmatch(sha)):
        return f"{_shown(name)} has no SHA-256 checksum but {_shown(sha)}"
    step = entry.get("step")
    if step is not None and (type(step) is not int or step < 0):
        return f"{_shown(name)} has step {_shown(step)}"
    return None


def manifest_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's structure or names; None if nothing."""
    last, best = data.get("last", []), data.get("best")
    if not isinstance(last, list):
        return f"'last' is {_shown(last)}, not a list"
    entries = [(entry, "last") for entry in last] + ([(best, "best")] if best is not None else [])
    for entry, kind in entries:
        problem = _entry_problem(entry, kind)
        if problem:
            return problem
    names = [entry["file"] for entry, _ in entries]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    return f"{_shown(duplicate)} is listed twice" if duplicate else None


def header_state(path: Path) -> dict[str, Any] | None:
    """The JSON state in a checkpoint's header if the file is a complete safetensors file; else None."""
    try:
        with safe_open(str(path), "pt") as f:
            state = json.loads((f.metadata() or {})["distill"])
    except (SafetensorError, OSError, KeyError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def rebuild(files: list[Path], checksum: Callable[[Path], str]) -> dict[str, Any] | None:
    """The manifest a lost ``manifest.json`` held: every checkpoint file among ``files`` that is complete
    and whose header state has the step its name gives, newest first, with ``checksum`` taken now, and
    ``"recovered": True``. None if no file qualifies."""
    found: dict[str, list[tuple[tuple[int, int], dict[str, Any]]]] = {k: [] for k in KINDS}
    for path in files:
        parsed, state = parse_name(path.name), header_state(path)
        if parsed is None or state is None:
            continue
        kind, step, n = parsed
        try:
            if int(state.get("global_step", 0)) != step:
                continue
        except (TypeError, ValueError):
            continue
        entry = {
            "file": path.name,
            "sha256": checksum(path),
            "bytes": path.stat().st_size,
            "step": step,
            "epoch": state.get("epoch"),
            "time": round(path.stat().st_mtime, 3),
        }
        found[kind].append(((step, n), entry))
    newest = {
        k: [e for _, e in sorted(v, key=lambda x: x[0], reverse=True)] for k, v in found.items()
    }
    if not newest["last"] and not newest["best"]:
        return None
    best = newest["best"][0] if newest["best"] else None
    return {"format": FORMAT, "last": newest["last"], "best": best, "recovered": True}
