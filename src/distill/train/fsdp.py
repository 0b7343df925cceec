"""FSDP2 (``train.distributed: fsdp`` under ``torchrun``): the student side and the teacher sharded with
``torch.distributed.fsdp.fully_shard`` on one device mesh, and sharded checkpoints with
``torch.distributed.checkpoint`` (DCP).

Sharding: every block (each child of an ``nn.ModuleList`` that has parameters: transformer layers)
is its own FSDP unit, then the whole module; the teacher goes through the same :func:`shard_module`,
frozen, so each rank holds ``1 / world`` of it and gathers one block at a time in forward. A top-k
cache (:mod:`distill.topk`) replaces the teacher altogether.

Checkpoints: each rank writes its shards of the weights and the optimizer state to
``checkpoints/sharded/step-NNNNNNNN`` (written under a ``.tmp`` name and renamed when every rank is
done); rank 0 writes the usual checkpoint file with the whole student's weights (gathered; what
evaluation, export and ``open_run`` read) and the JSON state naming the sharded folder. Resume reads
the sharded folder into the sharded model and optimizer, so a run continues exactly where it stopped.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from distill.errors import DistillError
from distill.train.distributed import DistInfo, barrier

SHARDED = "sharded"


def make_mesh(device: torch.device, info: DistInfo) -> Any:
    """A 1-D device mesh over every rank (the one the student and the teacher share)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (info.world_size,))


def shard_module(module: nn.Module, mesh: Any) -> nn.Module:
    """``fully_shard`` each block (children of ``nn.ModuleList`` with parameters), then ``module``;
    in place (the module is returned for ``Distiller.parallelize``)."""
    from torch.distributed.fsdp import fully_shard

    for sub in list(module.modules()):
        if isinstance(sub, nn.ModuleList):
            for block in sub:
                if next(block.parameters(), None) is not None:
                    fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


def shard_distiller(distiller: Any, device: torch.device, info: DistInfo) -> None:
    """Shard the teacher (if the distiller holds one) and the trainable side on one mesh."""
    from torch.distributed.fsdp import fully_shard

    mesh = make_mesh(device, info)
    if distiller.teacher is not None:
        shard_module(distiller.teacher, mesh)
    # the student is a unit of its own: evaluation and sampling call it without the side around it
    shard_module(distiller.student, mesh)
    distiller.parallelize(lambda side: fully_shard(side, mesh=mesh))  # projectors, loss parameters


class StateView:
    """A gathered state dict offered where a module is expected (``state_dict()`` only)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state


def full_state(module: nn.Module) -> StateView:
    """The whole (unsharded) state dict of a sharded ``module`` on the CPU: a collective, every rank
    calls it; rank 0 gets the tensors, the others an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return StateView(get_model_state_dict(module, options=options))


def local_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm of sharded gradients (a DTensor) as a plain tensor."""
    full = getattr(norm, "full_tensor", None)
    return full() if callable(full) else norm


def save_sharded(
    checkpoints: Path,
    step: int,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    info: DistInfo,
    keep: int,
) -> str:
    """Write every rank's shards of ``module`` and ``optimizer`` (a collective); returns the folder's
    name relative to ``checkpoints``. The ``keep`` newest folders stay, older ones are removed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    name = f"{SHARDED}/step-{step:08d}"
    final = checkpoints / name
    tmp = final.with_name(final.name + ".tmp")
    if info.is_main and tmp.exists():
        shutil.rmtree(tmp)
    barrier(info)
    model_state, optim_state = get_state_dict(module, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
    barrier(info)
    if info.is_main:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        folders = sorted(p for p in (checkpoints / SHARDED).glob("step-*") if p.suffix != ".tmp")
        for old in folders[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(info)
    return name


def load_sharded(
    checkpoints: Path, state: dict[str, Any], module: nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Read the sharded folder a checkpoint's ``state`` names into ``module`` and ``optimizer``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    name = state.get(SHARDED)
    if not name or not (checkpoints / name).is_dir():
        raise DistillError(
            f"the last checkpoint in {checkpoints} has no sharded state ({name or 'none'}): it was "
            "not written with train.distributed: fsdp; resume with distributed: ddp"
        )
    model_state, optim_state = get_state_dict(module, optimizer)
    both = {"model": model_state, "optim": optim_state}
    dcp.load(both, checkpoint_id=str(checkpoints / name))
    set_state_dict(
        module, optimizer, model_state_dict=both["model"], optim_state_dict=both["optim"]
    )
    if dist.is_initialized():
        dist.barrier()
