"""Which device and process group each rank gets under torchrun, with the world and the GPUs faked (the
choices are what matter; no GPU or process group is needed to check them)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from distill.train import distributed
from distill.train.distributed import DistInfo, init_distributed, pick_device

RANK_1_OF_2 = DistInfo(rank=1, world_size=2, local_rank=1)


@pytest.fixture
def gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:0", "cuda:3"])
def test_each_rank_takes_the_gpu_of_its_local_rank(gpus, device):
    assert pick_device(device, RANK_1_OF_2) == torch.device("cuda", 1)


def test_one_process_keeps_the_gpu_it_names(gpus):
    assert pick_device("cuda:3", DistInfo()) == torch.device("cuda", 3)
    assert pick_device("cpu", RANK_1_OF_2) == torch.device("cpu")


def test_joining_the_group_binds_the_local_gpu_first(gpus, monkeypatch):
    calls: list = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))

    def init_process_group(backend=None, device_id=None):  # PyTorch >= 2.3's keywords
        calls.append(("init_process_group", {"backend": backend, "device_id": device_id}))

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(distributed.atexit, "register", lambda f: None)
    assert init_distributed("cuda:0") == RANK_1_OF_2
    assert calls == [
        ("set_device", torch.device("cuda", 1)),
        ("init_process_group", {"backend": "nccl", "device_id": torch.device("cuda", 1)}),
    ]
