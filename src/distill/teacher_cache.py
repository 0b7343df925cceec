"""A teacher-output source that runs the frozen teacher over the training set once and then reads its
outputs by sample index (recipe ``distill.cache_teacher: true``).

Valid only when the teacher sees the same input for a sample every epoch: no data augmentation, and terms
that read the task's per-sample outputs (``@logits``), not module features nor per-token outputs whose
length follows each batch's padding (a task's ``per_token_outputs``, e.g. text ``@hidden_states.N``).
The recipe schema refuses the other cases (:func:`uncacheable`). A run then costs one teacher pass over
the data instead of one per epoch.

The :class:`~distill.train.Trainer` fills the cache in ``prepare()``; until then (and for batches without
an ``index``) the teacher runs online, so a Distiller used on its own is correct, only not faster.

Under ``torchrun`` each rank runs the teacher over its own contiguous slice of the training set (a
DataLoader given by the caller: over the batches its ``DistributedSampler`` gives that rank); the slices'
outputs are gathered once, so every rank holds the whole table, checked to cover every sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from distill.data.base import make_loader
from distill.data.views import ViewAugment
from distill.distiller import OnlineTeacher, TeacherSource
from distill.errors import DistillError
from distill.tasks.base import Batch, Task
from distill.teacher_views import ViewStore


def uncacheable(taps: Iterable[str], per_token: Iterable[str] = (), task: str = "") -> str | None:
    """Why the cache cannot keep ``taps`` (``"..., tap an output ..."``), or None when it can: only the
    task's per-sample ``@outputs`` are kept, not a module's features nor per-token outputs (``per_token``:
    the task's ``per_token_outputs``) whose length follows each batch's padding. The recipe schema and
    :class:`CachedTeacher` both ask this."""
    taps, per_token = list(taps), set(per_token)
    module = next((t for t in taps if not t.startswith("@")), None)
    if module is not None:
        return (
            f"keeps the teacher's outputs only, but it taps its module {module!r}; tap an output "
            "(@logits) or turn cache_teacher off"
        )
    token = next((t for t in taps if t[1:].split(".")[0] in per_token), None)
    if token is not None:
        return (
            f"keeps one fixed-shape output per sample, but it taps {token!r}, a per-token output of "
            f"the {task or 'its'} task whose length follows each batch's padding, so it cannot be cached exactly; tap a per-sample "
            "output (@logits) or turn cache_teacher off"
        )
    return None


class CachedTeacher(TeacherSource):
    """The teacher's task outputs (``@name`` taps) for every training sample, ``(N, ...)`` on the CPU in
    the teacher's dtype, looked up by the batch's ``index`` extra (the sample's position in the dataset).

    With ``views`` (a :class:`~distill.data.views.ViewAugment`) and ``count`` views per sample, it is the
    augmentation-aware cache (:class:`~distill.teacher_views.ViewStore`): ``count`` views per sample drawn
    once, their parameters and the teacher's outputs kept in a verified file under ``folder``, and each
    epoch :meth:`view` gives every sample one of its stored views (chosen from ``seed`` and the epoch).
    """

    def __init__(
        self,
        teacher: nn.Module,
        task: Task,
        taps: Sequence[str],
        views: ViewAugment | None = None,
        count: int = 0,
        topk: int = 0,
        folder: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        reason = uncacheable(taps, task.per_token_outputs, task.name)
        if reason is not None:
            raise DistillError(f"cache_teacher {reason}")
        if (views is None) != (count == 0):
            raise DistillError(
                f"cache_teacher with augmented views needs both a view augmentation and a view count, got "
                f"{views!r} and {count}; set distill.cache_views with data.augment, or neither"
            )
        self.online = OnlineTeacher(teacher, task)
        self._at: torch.device | None = None  # the teacher's device when the trainer prepared it
        self.names = list(dict.fromkeys(taps))
        self.cache: dict[str, torch.Tensor] = {}
        self.store = ViewStore(views, count, topk, self.names, folder, seed) if views else None

    @property
    def filled(self) -> bool:
        return bool(self.cache) if self.store is None else self.store.filled

    def prepare(self, train_data: Any, batch_size: int, console: Any, is_main: bool) -> None:
        """The trainer's call: fill the cache from the training data (once), or read a stored one. The
        teacher's device is read here, after the trainer placed it, not walked every step."""
        self._at = _device(self.online.teacher)
        if self.store is not None:
            self.store.prepare(self.online, train_data, batch_size, console if is_main else None)
            return
        self.fill_from(train_data, batch_size, console, report=is_main)

    def view(self, batch: Batch, epoch: float) -> Batch:
        """With stored views: each sample's view for this epoch (its ``view`` extra says which); a batch
        without indices, or before the views exist, gets fresh views (the teacher then runs online)."""
        if self.store is None:
            return batch
        return self.store.view(batch, epoch)

    def fill_from(
        self, data: Any, batch_size: int, console: Any = None, report: bool = True
    ) -> None:
        """Fill from a training Dataset (its batches in index order; under DDP this rank's slice) or
        DataLoader (as it iterates), once; ``console`` (rich) says so when ``report``."""
        if self.filled:
            return
        loader = isinstance(data, DataLoader)
        dataset = data.dataset if loader else data
        rank, world = _rank_and_world()
        size = len(dataset)
        shard = (
            None
            if loader or world == 1
            else list(range(size * rank // world, size * (rank + 1) // world))
        )
        batches = data if loader else make_loader(data, batch_size, shard)
        if console is not None and report:
            split = f", each of {world} processes its share" if world > 1 else ""
            console.print(f"caching the teacher's outputs for {size:,} training samples{split}")
        self.fill(batches, size)

    @torch.no_grad()
    def fill(self, batches: Iterable[Any], size: int) -> None:
        """Run the teacher once over ``batches`` (raw batches of the training set, each with an ``index``
        extra; ``size`` samples in all) and keep the outputs the terms read. Under DDP each rank passes
        its own share of the batches; the shares are gathered so that every rank keeps all ``size``."""
        indices: list[torch.Tensor] = []
        values: dict[str, list[torch.Tensor]] = {name: [] for name in self.names}
        for raw in batches:
            batch = self.online.task.split(raw)
            indices.append(_index(batch))
            outputs = self.online.outputs(batch.to(_device(self.online.teacher)), self.names)
            for name in self.names:
                values[name].append(outputs[name].detach().cpu())
        shares = [(indices, values)]
        if _rank_and_world()[1] > 1:  # every rank needs every sample's outputs
            shares = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(shares, (indices, values))
        self.cache = self._table(shares, size)

    def _table(self, shares: list[Any], size: int) -> dict[str, torch.Tensor]:
        """``(N, ...)`` tables from the ranks' ``(indices, outputs)`` shares, checked to cover all ``size``
        samples with outputs of one shape."""
        cache: dict[str, torch.Tensor] = {}
        seen = torch.zeros(size, dtype=torch.bool)
        for indices, values in shares:
            for i, index in enumerate(indices):
                for name in self.names:
                    value = values[name][i]
                    if name not in cache:
                        cache[name] = value.new_zeros((size, *value.shape[1:]))
                    if value.shape[1:] != cache[name].shape[1:]:
                        raise DistillError(
                            f"cache_teacher cannot keep {name}: its shape changes between batches "
                            f"({tuple(cache[name].shape[1:])} vs {tuple(value.shape[1:])}, e.g. "
                            "padded text); turn cache_teacher off for this recipe"
                        )
                    cache[name][index] = value
                seen[index] = True
        if not bool(seen.all()):
            missing = int((~seen).sum())
            raise DistillError(
                f"cache_teacher saw no teacher output for {missing} of {size} training samples; the "
                "training batches must carry each sample's index"
            )
        return cache

    def outputs(self, batch: Batch, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        if self.store is not None:
            stored = self.store.outputs(batch, taps)
            if stored is None:
                return self.online.outputs(batch, taps)
            device = self._at or _device(self.online.teacher)
            return {t: v.to(device, non_blocking=True) for t, v in stored.items()}
        index = batch.extras.get("index")
        if not self.cache or index is None or any(t not in self.cache for t in taps):
            return self.online.outputs(batch, taps)
        device = self._at or _device(self.online.teacher)
        index = index.cpu()
        return {t: self.cache[t][index].to(device, non_blocking=True) for t in taps}


def _index(batch: Batch) -> torch.Tensor:
    index = batch.extras.get("index")
    if not isinstance(index, torch.Tensor):
        raise DistillError(
            "cache_teacher needs batches that carry each sample's index (distill's datasets do: "
            "'index'); this dataset's batches have none, so turn cache_teacher off"
        )
    return index.cpu().long()


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0 and 1 outside ``torchrun``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _device(module: nn.Module) -> torch.device:
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
