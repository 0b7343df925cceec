"""Checkpoints: safetensors for tensors, JSON for everything else; no pickle anywhere.

A checkpoint ``<dir>/<tag>.safetensors`` holds the trainable module (``model.*``) and optionally the
optimizer's tensors (``optim.*``); ``<dir>/<tag>.json`` holds the step counters, the optimizer's
non-tensor state and the SHA-256 of the tensor file. Files are written to a temporary name, fsynced and
renamed, so a crash never leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from distill.errors import DistillError


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then fsync and rename onto ``path``."""
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


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str)))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_tensors(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """CPU copies of a state dict's tensors; tied weights (shared storage) are stored once per name."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state.items():
        tensor = value.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        out[prefix + key] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out


def flatten_state(state: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested state (e.g. an optimizer state_dict) with ``{"__tensor__": key}``."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {str(k): flatten_state(v, f"{prefix}.{k}", tensors) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(state)]
    return state


def unflatten_state(state: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(state, dict):
        if set(state) == {"__tensor__"}:
            return tensors[state["__tensor__"]]
        return {k: unflatten_state(v, tensors) for k, v in state.items()}
    if isinstance(state, list):
        return [unflatten_state(v, tensors) for v in state]
    return state


def optimizer_state_from_json(state: dict[str, Any]) -> dict[str, Any]:
    """JSON turned optimizer state keys into strings; the optimizer wants integer parameter ids."""
    state = dict(state)
    state["state"] = {int(k): v for k, v in state.get("state", {}).items()}
    return state


def save_checkpoint(
    directory: Path,
    tag: str,
    model: nn.Module,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write ``<tag>.safetensors`` then ``<tag>.json`` (the JSON names the tensor file's checksum)."""
    directory = Path(directory)
    tensors = state_tensors(model.state_dict(), "model.")
    record = dict(state)
    if optimizer is not None:
        record["optimizer"] = flatten_state(optimizer.state_dict(), "optim", tensors)
    weights = directory / f"{tag}.safetensors"
    try:
        atomic_write(weights, lambda tmp: save_file(tensors, tmp))
        record["sha256"] = _sha256(weights)
        write_json(directory / f"{tag}.json", record)
    except OSError as err:
        raise DistillError(
            f"cannot write checkpoint to {directory}: {err.strerror}; free space or pick another run dir"
        ) from None
    return weights


def load_checkpoint(directory: Path, tag: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint. Returns ``(tensors, state)``; tensors keep their prefixes."""
    directory = Path(directory)
    weights, meta = directory / f"{tag}.safetensors", directory / f"{tag}.json"
    if not weights.is_file() or not meta.is_file():
        raise DistillError(
            f"no {tag!r} checkpoint in {directory}; train first or pick a run dir with checkpoints"
        )
    state = json.loads(meta.read_text())
    if state.get("sha256") and state["sha256"] != _sha256(weights):
        raise DistillError(
            f"checkpoint {weights} does not match its recorded checksum (corrupt or truncated)"
        )
    return load_file(str(weights)), state


def model_tensors(
    tensors: dict[str, torch.Tensor], prefix: str = "model."
) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_student_weights(run_dir: Path, student: nn.Module, tag: str = "best") -> dict[str, Any]:
    """Load the student's weights from a run directory's ``checkpoints/<tag>``; returns the JSON state."""
    tensors, state = load_checkpoint(Path(run_dir) / "checkpoints", tag)
    student.load_state_dict(model_tensors(tensors, "model.student."))
    return state
