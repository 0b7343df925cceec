"""Checkpoints: safetensors files plus a JSON manifest; no pickle anywhere.

The store, its file layout and its guarantees are in :mod:`distill.train.checkpoint_store`, the state
flattening in :mod:`distill.train.flatten`; this module adds what reads a run's student weights and
writes a plain model file, and re-exports both, so ``distill.train.checkpoint`` is the one import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from distill.errors import DistillError
from distill.io import atomic_write, write_error
from distill.train.checkpoint_store import MANIFEST as MANIFEST  # re-exported
from distill.train.checkpoint_store import CheckpointStore
from distill.train.checkpoint_store import Loaded as Loaded  # re-exported
from distill.train.flatten import flatten_state as flatten_state  # re-exported
from distill.train.flatten import model_tensors, state_tensors
from distill.train.flatten import (
    optimizer_state_from_json as optimizer_state_from_json,  # re-exported
)
from distill.train.flatten import unflatten_state as unflatten_state  # re-exported

EMA_PREFIX = "ema."  # the student's weight average (train.ema), beside the raw "model." tensors
SOURCE_PREFIX = "source."  # what the teacher source keeps between steps (the replay buffer)


def save_checkpoint(
    directory: Path,
    tag: str,
    model: nn.Module,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write a ``tag`` (``last`` or ``best``) checkpoint into ``directory``; see :class:`CheckpointStore`."""
    return CheckpointStore(directory).save(tag, model, state, optimizer)


def load_checkpoint(directory: Path, tag: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify the newest good ``tag`` checkpoint. Returns ``(tensors, state)``."""
    loaded = CheckpointStore(directory).load(tag)
    return loaded.tensors, loaded.state


def load_student_weights(run_dir: Path, student: nn.Module, tag: str = "best") -> dict[str, Any]:
    """Load the student's weights from a run directory's checkpoints (its weight average when the run
    kept one, ``train.ema``: what the run evaluated); returns the JSON state."""
    tensors, state = load_checkpoint(Path(run_dir) / "checkpoints", tag)
    try:
        student.load_state_dict(student_tensors(tensors))
    except RuntimeError as err:  # e.g. the run's recipe.yaml was edited after training
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])[:160]
        raise DistillError(
            f"the {tag!r} weights in {run_dir} do not fit the model built for them ({detail}); the "
            "model name and options (channels, layers, num_classes) must be those the run was "
            "trained with (its recipe.yaml): restore them or pick the matching run"
        ) from None
    return state


def student_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's state dict from a checkpoint's tensors: the weight average when the run kept one
    (``train.ema``), else the raw weights."""
    return model_tensors(tensors, EMA_PREFIX) or model_tensors(tensors, "model.student.")


def save_model(path: Path, model: nn.Module, metadata: dict[str, str] | None = None) -> None:
    """Write ``model``'s state dict as a plain safetensors file (what a run hands over)."""
    try:
        atomic_write(
            Path(path),
            lambda tmp: save_file(state_tensors(model.state_dict()), tmp, metadata=metadata),
        )
    except (OSError, SafetensorError) as err:
        raise write_error(err, Path(path).parent, Path(path).name) from None
