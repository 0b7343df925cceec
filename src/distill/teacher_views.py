"""The augmentation-aware teacher cache's store: a fixed number of augmented views per training sample,
their parameters and the teacher's outputs on each, written once to a verified file and reused.

After Shen and Xing, "A Fast Knowledge Distillation Framework for Visual Recognition" (ECCV 2022): the
teacher's soft labels of each crop are stored with the crop's coordinates, so a long schedule pays the
teacher once. Here a view is whatever :class:`~distill.data.views.ViewAugment` draws (resized crop, shift,
flip, RandAugment-style ops) as ``PARAMS`` numbers, so :meth:`ViewStore.view` rebuilds it exactly.

The file (``views.safetensors``) holds ``params`` ``(V, N, PARAMS)`` float32 and, per teacher tap, either
the full output ``(V, N, ...)`` in float16 or, for ``@logits`` with ``topk``, the top-k log-probabilities
(float16), their classes (int32) and the rest's probability mass (float32); read back, the rest is spread
evenly over the other classes, so the answer is a log-probability vector (softmax-based losses see the
same distribution up to that spread; a loss on raw logit values, e.g. ``logit_mse``, does not). The
manifest (``manifest.json``, written last) names the settings and the file's SHA-256; a file that fails
it is refused. The folder is named by a hash of the settings (teacher weights, data, augmentation,
view count, top-k), so runs that share them share the file, and any change fills a new one.

Why the fill does not overlap training: the fill is teacher forward passes over every view; on a CPU
machine they compete with training for the same cores, and the student's first epoch needs views of
every sample anyway. It runs once, in the trainer's ``prepare``, and is reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from distill.data.base import make_loader
from distill.data.views import PARAMS, ViewAugment
from distill.distiller import OnlineTeacher
from distill.errors import DistillError
from distill.io import atomic_write, file_sha256, write_json
from distill.tasks.base import Batch

FORMAT = 1
VIEW_SEED = 0x5EED  # the views are drawn from this, not the run's seed: runs of any seed share them
FILE, MANIFEST = "views.safetensors", "manifest.json"


def views_root() -> Path:
    """``$DISTILL_CACHE/teacher_views`` (default ``~/.cache/distill/teacher_views``)."""
    return (
        Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill")) / "teacher_views"
    )


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, value in module.state_dict().items():
        h.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        h.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ViewStore:
    """``count`` views of each training sample and the teacher's ``names`` outputs on them."""

    def __init__(
        self,
        views: ViewAugment,
        count: int,
        topk: int,
        names: Sequence[str],
        folder: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        if topk and list(names) != ["@logits"]:
            raise DistillError(
                f"cache_topk keeps top-k logits, but the terms read {', '.join(names)}; set cache_topk: 0"
            )
        self.views, self.count, self.topk, self.names = views, int(count), int(topk), list(names)
        self.root = Path(folder) if folder is not None else None
        self.seed = int(seed)
        self.params: torch.Tensor | None = None  # (V, N, PARAMS)
        self.stored: dict[str, torch.Tensor] = {}
        self.folder: Path | None = None
        self.fill_seconds: float | None = None  # set when this process filled the file
        self._choice: tuple[int, torch.Tensor] | None = None
        self.classes: int | None = None  # the teacher's class count, for top-k reads

    @property
    def filled(self) -> bool:
        return self.params is not None

    # ------------------------------------------------------------------ fill or reuse
    def settings(self, online: OnlineTeacher, dataset: Any, batch_size: int) -> dict[str, Any]:
        """What the stored file depends on; its hash names the folder."""
        return {
            "format": FORMAT,
            "augment": self.views.settings(),
            "views": self.count,
            "topk": self.topk,
            "taps": self.names,
            "teacher": module_digest(online.teacher),
            "data": _data_digest(online, dataset, batch_size),
            "samples": len(dataset),
        }

    def prepare(
        self, online: OnlineTeacher, data: Any, batch_size: int, console: Any = None
    ) -> None:
        """Read the stored views for these settings, or draw and fill them (once) and write the file."""
        if self.filled:
            return
        dataset = data.dataset if isinstance(data, DataLoader) else data
        settings = self.settings(online, dataset, batch_size)
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
        self.folder = (self.root or views_root()) / key
        if (self.folder / MANIFEST).is_file():
            self._load(settings)
            if console is not None:
                console.print(f"teacher views: reusing {self.folder}", soft_wrap=True)
            return
        if console is not None:
            console.print(
                f"teacher views: drawing {self.count} views of {len(dataset):,} samples and caching the "
                f"teacher's outputs in {self.folder}",
                soft_wrap=True,
            )
        start = time.perf_counter()
        tensors = self._fill(online, dataset, batch_size)
        self.fill_seconds = time.perf_counter() - start
        try:
            self._write(tensors, settings)
        except OSError as err:
            raise DistillError(
                f"cannot write the teacher view cache in {self.folder} ({err.strerror or err}); set "
                "DISTILL_CACHE to a writable folder (default ~/.cache/distill)"
            ) from None
        self._use(tensors)

    @torch.no_grad()
    def _fill(
        self, online: OnlineTeacher, dataset: Any, batch_size: int
    ) -> dict[str, torch.Tensor]:
        n = len(dataset)
        params: torch.Tensor | None = None
        out: dict[str, torch.Tensor] = {}
        device = _device(online.teacher)
        seen = torch.zeros(n, dtype=torch.bool)
        for raw in make_loader(dataset, batch_size, None):
            batch = online.task.split(raw)
            index = _index(batch)
            images = batch.inputs
            if params is None:
                size = tuple(images.shape[-2:])
                gens = [
                    torch.Generator().manual_seed(VIEW_SEED * 1_000_003 + v)
                    for v in range(self.count)
                ]
                params = torch.stack([self.views.draw(n, size, g) for g in gens])  # (V, N, PARAMS)
            for v in range(self.count):
                view = Batch(
                    self.views.apply(images, params[v, index]), batch.targets, batch.extras
                )
                outputs = online.outputs(view.to(device), self.names)
                for name, value in self._compact(outputs).items():
                    if name not in out:
                        out[name] = value.new_zeros((self.count, n, *value.shape[1:]))
                    out[name][v, index] = value.cpu()
            seen[index] = True
        if params is None or not bool(seen.all()):
            raise DistillError(
                f"cache_views saw {int(seen.sum())} of {n} training samples; the training batches must "
                "carry each sample's index"
            )
        sizes = {"classes": torch.tensor(self.classes)} if self.classes else {}
        return {"params": params, **out, **sizes}

    def _compact(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        result: dict[str, torch.Tensor] = {}
        for name in self.names:
            value = outputs[name].detach().float()
            if self.topk and self.topk < value.shape[-1]:
                self.classes = value.shape[-1]
                logp = torch.log_softmax(value, dim=-1)
                top = logp.topk(self.topk, dim=-1)
                result[f"top:{name}"] = top.values.half()
                result[f"class:{name}"] = top.indices.int()
                result[f"rest:{name}"] = (1.0 - top.values.exp().sum(-1)).clamp(min=0.0)
            else:
                result[f"out:{name}"] = value.half()
        return result

    def _write(self, tensors: dict[str, torch.Tensor], settings: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        assert self.folder is not None
        path = self.folder / FILE
        atomic_write(
            path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        )
        manifest = {
            "settings": settings,
            "file": FILE,
            "sha256": file_sha256(path),
            "bytes": path.stat().st_size,
            "fill_seconds": self.fill_seconds,  # the teacher's passes over every view, for the record
        }
        write_json(self.folder / MANIFEST, manifest)

    def _load(self, settings: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        assert self.folder is not None
        where = self.folder
        try:
            manifest = json.loads((where / MANIFEST).read_text())
            recorded, digest = manifest["settings"], manifest["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DistillError(
                f"teacher view cache {where / MANIFEST} is unreadable ({type(err).__name__}); delete "
                f"{where} to fill it again"
            ) from None
        if recorded != settings:
            raise DistillError(
                f"teacher view cache {where} records other settings than its name says (edited?); "
                f"delete {where} to fill it again"
            )
        path = where / FILE
        if not path.is_file() or file_sha256(path) != digest:
            raise DistillError(
                f"teacher view cache {path} fails its SHA-256 check (changed or cut short after it was "
                f"written); delete {where} to fill it again"
            )
        self._use(load_file(str(path)))

    def _use(self, tensors: dict[str, torch.Tensor]) -> None:
        params = tensors.get("params")
        shape = tuple(params.shape) if params is not None else None
        if shape is None or len(shape) != 3 or shape[0] != self.count or shape[2] != PARAMS:
            raise DistillError(
                f"teacher view cache in {self.folder} holds views of shape {shape}, not "
                f"({self.count}, N, {PARAMS}); delete it to fill it again"
            )
        if "classes" in tensors:
            self.classes = int(tensors["classes"])
        self.stored = {k: v for k, v in tensors.items() if k not in ("params", "classes")}
        expected = {
            f"{kind}:{name}"
            for name in self.names
            for kind in (("top", "class", "rest") if self.topk and self.classes else ("out",))
        }
        wrong = [
            k for k in expected if k not in self.stored or self.stored[k].shape[:2] != shape[:2]
        ]
        if wrong or set(self.stored) != expected:
            raise DistillError(
                f"teacher view cache in {self.folder} does not hold {sorted(expected)} for "
                f"{shape[0]} views of {shape[1]} samples (it has {sorted(self.stored)}); delete it "
                "to fill it again"
            )
        self.params = params

    # ------------------------------------------------------------------ reading
    def choice(self, epoch: int) -> torch.Tensor:
        """Which stored view each sample shows in ``epoch`` ``(N,)``: a function of the run's seed and
        the epoch only, so a resumed run shows the same views."""
        if self._choice is None or self._choice[0] != epoch:
            assert self.params is not None
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 7919 + 1)
            self._choice = (epoch, torch.randint(self.count, (self.params.shape[1],), generator=g))
        return self._choice[1]

    def view(self, batch: Batch, epoch: float) -> Batch:
        index = batch.extras.get("index")
        if not self.filled or not isinstance(index, torch.Tensor):
            return Batch(self.views(batch.inputs), batch.targets, dict(batch.extras))
        assert self.params is not None
        index = index.cpu().long()
        which = self.choice(int(epoch + 1e-9))[index]
        inputs = self.views.apply(batch.inputs, self.params[which, index])
        return Batch(inputs, batch.targets, {**batch.extras, "view": which})

    def outputs(self, batch: Batch, taps: Sequence[str]) -> dict[str, torch.Tensor] | None:
        """The stored outputs of the batch's views; None when the batch shows no stored view."""
        index, which = batch.extras.get("index"), batch.extras.get("view")
        if which is None or index is None or any(t not in self.names for t in taps):
            return None
        index = index.cpu().long()
        return {t: self.read(t, which, index) for t in taps}

    def read(self, name: str, which: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Tap ``name`` of view ``which[i]`` of sample ``index[i]``, as float32."""
        if f"out:{name}" in self.stored:
            return self.stored[f"out:{name}"][which, index].float()
        top = self.stored[f"top:{name}"][which, index].float()
        classes = self.stored[f"class:{name}"][which, index].long()
        rest = self.stored[f"rest:{name}"][which, index]
        size = int(self.classes or top.shape[-1])
        others = max(size - top.shape[-1], 1)
        spread = (rest.clamp(min=1e-12) / others).log()[:, None]
        logp = spread.expand(len(index), size).clone()
        return logp.scatter(1, classes, top)


def _data_digest(online: OnlineTeacher, dataset: Any, batch_size: int) -> str:
    """SHA-256 of the training inputs in index order (a changed or re-subset dataset is other data),
    whatever the batch size they are read in."""
    indices, values = hashlib.sha256(), hashlib.sha256()
    for raw in make_loader(dataset, batch_size, None):
        batch = online.task.split(raw)
        inputs = batch.inputs
        if not isinstance(inputs, torch.Tensor):
            raise DistillError(
                "cache_views stores views of image tensors; this dataset's inputs are "
                f"{type(inputs).__name__}; remove cache_views"
            )
        indices.update(_index(batch).numpy().tobytes())
        values.update(
            inputs.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
        )
    return hashlib.sha256(indices.digest() + values.digest()).hexdigest()


def _index(batch: Batch) -> torch.Tensor:
    index = batch.extras.get("index")
    if not isinstance(index, torch.Tensor):
        raise DistillError(
            "cache_teacher needs batches that carry each sample's index (distill's datasets do: "
            "'index'); this dataset's batches have none, so turn cache_teacher off"
        )
    return index.cpu().long()


def _device(module: torch.nn.Module) -> torch.device:
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
