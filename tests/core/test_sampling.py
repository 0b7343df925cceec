"""Batches of similar length (``train.group_by_length``): every item once, less padding, an order fixed by
(seed, epoch), exact mid-epoch skipping for resume, disjoint shards under torchrun, and clear refusals."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    SequentialSampler,
    TensorDataset,
)

from distill.errors import DistillError
from distill.train.distributed import DistInfo
from distill.train.sampling import LengthGroupedSampler, epoch_loader, item_lengths

BATCH = 8


class Sized(Dataset):
    """Items are their own index; ``lengths()`` gives a random length per item (4..64)."""

    def __init__(self, n: int = 203, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.sizes = [rng.randint(4, 64) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> int:
        return i

    def lengths(self) -> list[int]:
        return self.sizes


def _order(data: Sized, epoch: int = 0, skip: int = 0, dist: DistInfo | None = None, grouped=True):
    loader = epoch_loader(
        data, BATCH, dist or DistInfo(), 0, epoch, skip, data.lengths() if grouped else None
    )
    return [batch.tolist() for batch in loader]


def _padded_tokens(data: Sized, batches: list[list[int]]) -> int:
    return sum(max(data.sizes[i] for i in b) * len(b) for b in batches)


def test_every_item_once_and_far_less_padding() -> None:
    data = Sized()
    grouped, plain = _order(data), _order(data, grouped=False)
    assert sorted(i for b in grouped for i in b) == list(range(len(data)))
    assert [len(b) for b in grouped] == [BATCH] * 25 + [3]  # 203 items: the partial batch is last
    real = sum(data.sizes)
    # random lengths 4..64: shuffled batches are ~55 % real tokens, grouped ones above 90 %
    assert real / _padded_tokens(data, plain) < 0.7
    assert real / _padded_tokens(data, grouped) > 0.9


def test_order_is_fixed_by_seed_and_epoch_and_batches_are_shuffled() -> None:
    data = Sized()
    assert _order(data, epoch=1) == _order(data, epoch=1)
    assert _order(data, epoch=1) != _order(data, epoch=2)
    longest = [max(data.sizes[i] for i in b) for b in _order(data)[:-1]]
    # 25 full batches in one sorted group of 50: without the batch shuffle they would run long to short
    assert longest != sorted(longest, reverse=True)


def test_skipping_batches_continues_the_uninterrupted_order() -> None:
    data = Sized()
    full = _order(data, epoch=3)
    assert _order(data, epoch=3, skip=5) == full[5:]


def test_shards_are_disjoint_and_cover_the_data_under_torchrun() -> None:
    data = Sized(n=200)
    shards = [_order(data, dist=DistInfo(rank=r, world_size=2)) for r in (0, 1)]
    items = [{i for b in shard for i in b} for shard in shards]
    assert not items[0] & items[1] and items[0] | items[1] == set(range(200))
    assert len(shards[0]) == len(shards[1])  # the same number of steps on every rank


def test_sampler_length_and_megabatch() -> None:
    data = Sized(n=40)
    inner = SequentialSampler(data)
    one_group = list(LengthGroupedSampler(inner, data.sizes, 4, seed=0, epoch=0, megabatch=10))
    assert len(LengthGroupedSampler(inner, data.sizes, 4, 0, 0)) == 40
    batches = [one_group[i : i + 4] for i in range(0, 40, 4)]
    # one group of all 40: batches hold consecutive lengths of the sorted order
    ranks = {i: r for r, i in enumerate(sorted(range(40), key=lambda i: -data.sizes[i]))}
    assert all(max(ranks[i] for i in b) - min(ranks[i] for i in b) == 3 for b in batches)


def test_datasets_without_lengths_are_refused() -> None:
    images = TensorDataset(torch.zeros(4, 2))
    with pytest.raises(DistillError, match=r"group_by_length needs .* got TensorDataset; set"):
        item_lengths(images)
    with pytest.raises(DistillError, match="got DataLoader"):
        item_lengths(DataLoader(images))

    class Wrong(Sized):
        def lengths(self) -> list[int]:
            return [1, 2]

    with pytest.raises(DistillError, match=r"gave 2 lengths for 203 items; it must return one"):
        item_lengths(Wrong())


def test_a_user_dataloader_under_torchrun_needs_a_distributed_sampler() -> None:
    """A plain DataLoader would give every rank all the data, silently: refused with the two fixes."""
    loader = DataLoader(TensorDataset(torch.arange(20)), batch_size=4, shuffle=True)
    with pytest.raises(DistillError, match="RandomSampler.*pass the Dataset.*DistributedSampler"):
        epoch_loader(loader, 4, DistInfo(rank=1, world_size=2, local_rank=1), 0, 0)
    assert epoch_loader(loader, 4, DistInfo(), 0, 0) is loader  # one process: used as given


def test_a_user_distributed_sampler_is_set_to_each_epoch() -> None:
    data = TensorDataset(torch.arange(20))
    sampler = DistributedSampler(data, num_replicas=2, rank=1, seed=5)
    loader = DataLoader(data, batch_size=4, sampler=sampler)
    world = DistInfo(rank=1, world_size=2, local_rank=1)
    firsts = [[b[0].tolist() for b in epoch_loader(loader, 4, world, 0, e)] for e in (0, 1)]
    assert sampler.epoch == 1
    assert firsts[0] != firsts[1]  # a new shuffle each epoch, not epoch 0's order again
    wrong = DataLoader(data, sampler=DistributedSampler(data, num_replicas=4, rank=1))
    with pytest.raises(DistillError, match="over 4 processes but torchrun started 2"):
        epoch_loader(wrong, 4, world, 0, 0)


def test_the_trainer_refuses_an_unsharded_loader_when_built(monkeypatch) -> None:
    from rich.console import Console
    from torch import nn

    from distill.distiller import Distiller
    from distill.tasks import ClassificationTask
    from distill.train import TrainConfig, Trainer
    from distill.train import trainer as trainer_module

    world = DistInfo(rank=0, world_size=2, local_rank=0)
    monkeypatch.setattr(trainer_module, "init_distributed", lambda device: world)
    x = torch.randn(8, 4)
    loader = DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=4)
    with pytest.raises(DistillError, match="SequentialSampler.*pass the Dataset"):
        Trainer(
            Distiller(nn.Linear(4, 2), ClassificationTask()),
            loader,
            config=TrainConfig(batch_size=4, device="cpu"),
            console=Console(file=None, quiet=True),
        )
