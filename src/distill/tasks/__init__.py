"""Task adapters: how to split a batch, run a model, name its outputs, compute the task loss and evaluate.

A task is anything that satisfies :class:`Task`. Classification and text classification live here;
detection and causal LM adapters plug in the same way.
"""

from __future__ import annotations

from distill.registry import Registry
from distill.tasks.base import Batch, Task, move_to

TASKS: Registry = Registry("task")

from distill.tasks import classification, text  # noqa: E402,F401
from distill.tasks.classification import ClassificationTask  # noqa: E402
from distill.tasks.text import TextClassificationTask  # noqa: E402

__all__ = [
    "TASKS",
    "Task",
    "Batch",
    "move_to",
    "ClassificationTask",
    "TextClassificationTask",
    "build_task",
]


def build_task(name: str, **kwargs: object) -> Task:
    from distill.config.signature import check_kwargs

    cls = TASKS.get(name)
    check_kwargs(cls, kwargs, what=f"task {name!r}")
    return cls(**kwargs)
