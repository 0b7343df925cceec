""":class:`TopKCache`, the teacher-output source that fills and reads a top-k cache."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from distill.data.base import make_loader
from distill.distiller import OnlineTeacher, TeacherSource
from distill.errors import DistillError
from distill.tasks.base import Batch, Task
from distill.topk.sparse import dense_logits, token_rows, topk_of
from distill.topk.store import DTYPES, CacheSettings, CacheStore, Fingerprints, ShardReader

LOGITS, TOPK = "@logits", "@topk"
TAPS = (LOGITS, TOPK)


class TopKCache(TeacherSource):
    """The teacher's top-k per token for every training sample, in the folder ``path``.

    Made with a ``teacher`` it fills what the folder lacks when the trainer prepares (and answers
    online until then); made without one it needs a complete cache, which is checked here, before
    anything else runs. Rows are read by the batch's ``index`` and checked against its token ids. Two
    taps: ``@logits``, dense logits rebuilt from the top-k for any token loss
    (:func:`~distill.topk.sparse.dense_logits`), and ``@topk``, the sparse ``[log_probs (B, T, k)
    float32 at the capture temperature, ids (B, T, k) int64, rest (B, T)]`` the top-k losses
    (``topk_kl``, ``topk_jsd``, ``topk_tvd``) read without a ``(B, T, V)`` tensor.
    """

    def __init__(
        self,
        path: str | Path,
        settings: CacheSettings,
        fingerprints: Fingerprints,
        task: Task,
        taps: Sequence[str],
        teacher: nn.Module | None = None,
    ) -> None:
        other = [t for t in taps if t not in TAPS]
        if other:
            raise DistillError(
                f"distill.topk_cache answers {LOGITS} and {TOPK}, but the terms tap {other}; tap "
                "one of those, or remove topk_cache"
            )
        if settings.dtype not in DTYPES:
            raise DistillError(
                f"distill.topk_cache.dtype {settings.dtype!r} is not one of {sorted(DTYPES)}"
            )
        self.tap = LOGITS  # the teacher output the cache keeps the top-k of
        self.task = task
        self.settings = settings
        self.store = CacheStore(path, settings, fingerprints)
        self.online = OnlineTeacher(teacher, task) if teacher is not None else None
        self.reader: ShardReader | None = None
        if self.store.complete:
            self.reader = ShardReader(self.store)
        elif teacher is None:
            raise DistillError(
                f"topk cache {self.store.path} is not filled yet and there is no teacher to fill it; "
                "give the recipe its teacher for the first run"
            )

    @property
    def filled(self) -> bool:
        return self.reader is not None

    def evaluation_teacher(self, teacher: nn.Module | None) -> nn.Module | None:
        return None  # a run that finds the cache complete has no teacher: agreement never reported

    def prepare(self, train_data: Any, batch_size: int, console: Any, is_main: bool) -> None:
        """The trainer's call: check the cache against the training data and fill the shards it lacks
        (under ``torchrun`` each rank fills shards ``rank, rank + world, ...``)."""
        dataset = train_data.dataset if isinstance(train_data, DataLoader) else train_data
        size = len(dataset)
        self.store.check_size(size)
        if self.reader is not None:
            return
        assert self.online is not None  # __init__ refused a cache without teacher that is not full
        rank, world = _rank_world()
        if rank == 0:
            self.store.claim(size, self._vocab_size(dataset, batch_size))
        _barrier(world)
        self.store.manifest = self.store._read_manifest()
        todo = [
            i
            for i in range(self.store.num_shards(size))
            if i % world == rank and self.store.record(i) is None
        ]
        if console is not None and is_main and todo:
            console.print(
                f"filling the top-{self.settings.k} teacher cache {self.store.path}: "
                f"{len(todo)} shard(s) of {self.settings.shard_samples} samples"
            )
        for i in todo:
            self.fill_shard(dataset, i, batch_size)
        _barrier(world)
        if rank == 0:
            self.store.finish(size)
        _barrier(world)
        self.store.manifest = self.store._read_manifest()
        self.reader = ShardReader(self.store)

    def _vocab_size(self, dataset: Any, batch_size: int) -> int:
        first = next(iter(make_loader(dataset, 1, [0])))
        return int(self._teacher_logits(self.task.split(first)).shape[-1])

    def _teacher_logits(self, batch: Batch) -> torch.Tensor:
        assert self.online is not None
        device = _device(self.online.teacher)
        return self.online.outputs(batch.to(device), [self.tap])[self.tap]

    @torch.no_grad()
    def fill_shard(self, dataset: Any, index: int, batch_size: int) -> None:
        """Run the teacher over shard ``index``'s samples (in order) and write the shard."""
        per = self.settings.shard_samples
        first = index * per
        order = list(range(first, min(first + per, len(dataset))))
        dtype = DTYPES[self.settings.dtype]
        parts: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("logprobs", "ids", "rest", "tokens")
        }
        lengths: list[int] = []
        seen: list[int] = []
        for raw in make_loader(dataset, batch_size, order):
            batch = self.task.split(raw)
            seen += _index(batch).tolist()
            ids, rows = token_rows(batch)
            logits = self._teacher_logits(batch).cpu()
            for b, length in enumerate(rows.tolist()):
                values, top, rest = topk_of(
                    logits[b, :length], self.settings.k, self.settings.capture_temperature
                )
                parts["logprobs"].append(values.to(dtype))
                parts["ids"].append(top)
                parts["rest"].append(rest)
                parts["tokens"].append(ids[b, :length].cpu().to(torch.int32))
                lengths.append(length)
        if seen != order:
            raise DistillError(
                "distill.topk_cache: the dataset's loader did not return the samples in the order "
                "asked (or without their 'index'); use a distill dataset"
            )
        tensors = {k: torch.cat(v).contiguous() for k, v in parts.items()}
        tensors["offsets"] = torch.tensor([0, *lengths]).cumsum(0)
        self.store.write_shard(index, first, tensors)

    def outputs(self, batch: Batch, taps: Sequence[str]) -> dict[str, Any]:
        if self.reader is None:
            return self._online(batch, taps)
        values, top, rest = self._read(batch)
        answers: dict[str, Any] = {}
        if TOPK in taps:
            answers[TOPK] = [values, top.long(), rest]
        if LOGITS in taps:
            vocab, t_c = self.reader.vocab_size, self.settings.capture_temperature
            answers[LOGITS] = dense_logits(values, top, rest, vocab, t_c)
        return answers

    def _online(self, batch: Batch, taps: Sequence[str]) -> dict[str, Any]:
        """Before the cache is filled: the teacher's own logits, and their top-k as the cache keeps them."""
        assert self.online is not None  # __init__ refused a cache without teacher that is not full
        logits = self.online.outputs(batch, [LOGITS])[LOGITS]
        answers: dict[str, Any] = {}
        if TOPK in taps:
            values, top, rest = topk_of(logits, self.settings.k, self.settings.capture_temperature)
            answers[TOPK] = [values.to(DTYPES[self.settings.dtype]).float(), top.long(), rest]
        if LOGITS in taps:
            answers[LOGITS] = logits
        return answers

    def _read(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log_probs (B, T, k), ids (B, T, k), rest (B, T))`` of the batch's rows, on its device."""
        assert self.reader is not None
        ids, lengths = token_rows(batch)
        width = ids.shape[1]
        k = self.settings.k
        logprobs = torch.zeros(len(ids), width, k)
        top = torch.arange(k, dtype=torch.int32).expand(len(ids), width, k).clone()
        rest = torch.ones(len(ids), width)  # padding rows: a flat distribution (targets -100)
        for b, sample in enumerate(_index(batch).tolist()):
            rows = self.reader.sample(sample)
            length = int(lengths[b])
            if rows["tokens"].numel() != length or not torch.equal(
                rows["tokens"].long(), ids[b, :length].cpu().long()
            ):
                raise DistillError(
                    f"topk cache {self.store.path}: sample {sample}'s tokens differ from the ones the "
                    "teacher scored; the data changed since the cache was filled, so fill a new cache"
                )
            logprobs[b, :length] = rows["logprobs"].float()
            top[b, :length] = rows["ids"]
            rest[b, :length] = rows["rest"]
        device = ids.device
        return logprobs.to(device), top.to(device), rest.to(device)


def _index(batch: Batch) -> torch.Tensor:
    index = batch.extras.get("index")
    if not isinstance(index, torch.Tensor):
        raise DistillError(
            "distill.topk_cache needs batches that carry each sample's index ('index'); this "
            "dataset's batches have none, so remove topk_cache"
        )
    return index.cpu().long()


def _device(module: nn.Module) -> torch.device:
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
