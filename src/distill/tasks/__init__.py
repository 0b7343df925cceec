"""Task adapters: how to split a batch, run a model, name its outputs, compute the task loss and evaluate.

Every task subclasses :class:`Task` (``tasks/base.py``), which declares the optional hooks with no-op
defaults. Classification, text classification, detection (Ultralytics YOLO) and causal language modelling
(``causal_lm``) live here. A task that needs the student itself (detection uses the model's own loss)
overrides ``bind(student)``, which the distiller calls once.
"""

from __future__ import annotations

from distill.registry import Registry
from distill.tasks.base import Batch, Task, move_to

TASKS: Registry = Registry("task")

from distill.tasks import causal_lm, classification, detection, text  # noqa: E402,F401
from distill.tasks.causal_lm import CausalLMTask  # noqa: E402
from distill.tasks.classification import ClassificationTask  # noqa: E402
from distill.tasks.detection import DetectionTask  # noqa: E402
from distill.tasks.text import TextClassificationTask  # noqa: E402

__all__ = [
    "TASKS",
    "Task",
    "Batch",
    "CausalLMTask",
    "move_to",
    "ClassificationTask",
    "DetectionTask",
    "TextClassificationTask",
    "build_task",
]


def build_task(name: str, **kwargs: object) -> Task:
    """Instantiate a registered task, checking ``kwargs`` against its constructor."""
    return TASKS.create(name, kwargs)
