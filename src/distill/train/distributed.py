"""Distributed set-up that works unchanged under ``torchrun`` (DDP; gloo on CPU, NCCL on GPUs)."""

from __future__ import annotations

import atexit
import inspect
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, once; a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        chosen = pick_device(device, info)
        options: dict[str, Any] = {}
        if chosen.type == "cuda":
            # this process's GPU, before NCCL starts: otherwise every rank's context lands on GPU 0
            torch.cuda.set_device(chosen)
            if "device_id" in inspect.signature(dist.init_process_group).parameters:
                options["device_id"] = chosen  # binds the group to it (PyTorch >= 2.3)
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo", **options)
        atexit.register(_destroy_group)  # the group distill created is released when Python exits
    return info


def _destroy_group() -> None:
    """Leave the process group if it is still up (PyTorch warns, and may abort, on exit without it).

    On gloo the ranks first meet at a bounded barrier: a rank that tears its connections down while a
    peer is still finishing a collective makes gloo's worker threads abort that peer ("terminate called
    without an active exception"). A peer that never arrives (it failed) costs the timeout, not a hang.
    """
    if not dist.is_initialized():
        return
    if dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=60))
        except Exception:  # noqa: BLE001 - a peer already gone: leave anyway
            pass
    dist.destroy_process_group()


def pick_device(device: str, info: DistInfo) -> torch.device:
    """The device ``train.device`` means for this process. Under ``torchrun`` each rank takes the GPU of
    its local rank, whatever ``cuda:N`` says (choose the GPUs with ``CUDA_VISIBLE_DEVICES``): ``cuda:N``
    would put every rank on GPU N."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return chosen


def _mps_available() -> bool:
    """Apple's GPU (``train.device: auto`` takes it when there is no CUDA GPU)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def describe_device(requested: str, device: torch.device, info: DistInfo) -> str:
    """One line for the log: the device, how ``auto`` chose it, PyTorch's version and the process count."""
    why = (
        " (auto: no usable CUDA or MPS GPU)" if requested == "auto" and device.type == "cpu" else ""
    )
    processes = f"{info.world_size} process" + ("es" if info.world_size > 1 else "")
    return f"{device}{why}, torch {torch.__version__}, {processes}"


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Send rank 0's ``obj`` to every rank (e.g. evaluation metrics computed on rank 0)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` in rank order, on every rank (``[obj]`` without DDP)."""
    if not info.enabled:
        return [obj]
    box: list[Any] = [None] * info.world_size
    dist.all_gather_object(box, obj)
    return box


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers of ``module`` (BatchNorm statistics, which DDP leaves per rank)."""
    if info.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def any_rank(value: int, info: DistInfo, device: torch.device) -> int:
    """The largest of every rank's ``value`` (a stop flag all ranks must agree on); ``value`` alone without DDP."""
    if not info.enabled:
        return value
    flag = torch.tensor([value], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())
