"""Where the teacher's outputs come from: :class:`TeacherSource` and :class:`OnlineTeacher`, the frozen
teacher run in eval mode on the same inputs (the caches in ``teacher_cache``, ``topk`` and
``lm_modes`` are more sources behind the same interface)."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import torch
from torch import nn

from distill.taps import FeatureTaps
from distill.tasks.base import Batch, Task


class TeacherSource:
    """Where teacher outputs come from: :class:`OnlineTeacher` runs the teacher, ``CachedTeacher``
    (``teacher_cache.py``) reads outputs it kept. The trainer calls ``prepare`` once before training
    and the distiller ``outputs`` every step; neither asks which source it has."""

    def prepare(self, train_data: Any, batch_size: int, console: Any, is_main: bool) -> None:
        """Get ready to answer for ``train_data`` (a Dataset or DataLoader); ``console`` (rich) reports
        long work when ``is_main``. Nothing to do for a source that runs the teacher."""

    def view(self, batch: Batch, epoch: float) -> Batch:
        """The batch both models read at ``epoch``: ``batch`` itself, unless the source keeps augmented
        views of each sample (the augmentation-aware cache), when it is the stored view it answers for."""
        return batch

    def outputs(self, batch: Batch, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{tap: tensor}`` for the teacher taps (``@name`` outputs and module names) of ``batch``."""
        raise NotImplementedError

    def batch(self, batch: Batch, student: nn.Module, step: int) -> tuple[Batch, dict[str, float]]:
        """The batch optimizer step ``step`` trains on, and numbers to log for it: ``batch`` itself and
        none for a source that answers for the dataset's inputs. A generating source (on-policy
        distillation, :mod:`distill.lm_modes`) returns the ``student``'s own samples, and logs the mode it
        chose and the seconds it spent generating; its choice must be a function of ``step`` (resume)."""
        return batch, {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What the source must keep across an interruption (tensors, saved in every checkpoint and
        handed back to :meth:`load_state_tensors` on resume): none for a source whose answers depend
        on the batch and step only; the replay buffer of :mod:`distill.lm_modes`."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take back what :meth:`state_tensors` gave (an empty dict: a checkpoint without it)."""

    def evaluation_teacher(self, teacher: nn.Module | None) -> nn.Module | None:
        """The teacher the evaluation compares the student with (``agreement``): ``teacher``, or None
        from a source that lets a run train without one in memory (a complete top-k cache), so every
        run of a recipe, the one that filled the cache, the next ones and a resumed one, reports the
        same metrics."""
        return teacher


_TRAINING = attrgetter("training")


class OnlineTeacher(TeacherSource):
    """Runs the frozen teacher in eval mode under ``torch.no_grad`` on the same (augmented) inputs."""

    def __init__(self, teacher: nn.Module, task: Task) -> None:
        self.teacher = teacher
        self.task = task
        self.upcast = False  # a teacher cast to half precision: outputs go to the losses in float32
        self._modules: list[nn.Module] | None = None  # the teacher's modules, listed once
        self._taps: tuple[tuple[str, ...], FeatureTaps | None] | None = None  # the last taps' hooks

    def _keep_eval(self) -> None:
        """Put the teacher back in eval mode if any of its modules left it (reading the flags is much
        cheaper than ``eval()``, which sets every module's flag, on every step)."""
        if self._modules is None:
            self._modules = list(self.teacher.modules())
        if any(map(_TRAINING, self._modules)):  # the flags read in C, not a generator
            self.teacher.eval()

    def _module_taps(self, taps: Sequence[str]) -> FeatureTaps | None:
        """The hooks for ``taps``' module names (None when all are task outputs), built once per set
        of taps: a step asks for the same ones every time."""
        key = tuple(taps)
        if self._taps is None or self._taps[0] != key:
            names = [t for t in key if not t.startswith("@")]
            self._taps = key, FeatureTaps(self.teacher, names, detach=True) if names else None
        return self._taps[1]

    @torch.no_grad()
    def outputs(self, batch: Batch, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        self._keep_eval()
        hooks = self._module_taps(taps)
        inputs = self.task.teacher_inputs(batch)
        if hooks is None:
            named = self.task.forward(self.teacher, inputs)
        else:
            with hooks:
                named = self.task.forward(self.teacher, inputs)
        result = {"@" + k: v.detach() for k, v in named.items()}
        if hooks is not None:
            result.update(hooks)
        if self.upcast:
            result = {k: _cast_floating(v, torch.float32) for k, v in result.items()}
        return result


def _cast_floating(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with its floating-point tensors (also inside tuples, lists and dicts) cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast_floating(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast_floating(v, dtype) for k, v in value.items()}
    return value
