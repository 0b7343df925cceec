"""distill: knowledge distillation for PyTorch models, from teacher to small, fast student.

The Python API is the product; the ``distill`` CLI is a thin shell over :mod:`distill.api`.

>>> from distill import Distiller, Term, Trainer, TrainConfig, ClassificationTask, KDLoss
>>> distiller = Distiller(student, ClassificationTask(), teacher=teacher,
...                       terms=[Term(KDLoss(temperature=4.0), weight=0.9)], task_weight=0.1)
>>> Trainer(distiller, train_loader, val_loader, TrainConfig(epochs=10), run_dir="runs/kd").fit()
>>> run = open_run("runs/fashion_mnist-kd", "best")  # a run distill.api.train wrote (it keeps recipe.yaml)
"""

from __future__ import annotations

__version__ = "0.1.0"

from distill.config.run import Run, open_run
from distill.distiller import Distiller, DistillStep, OnlineTeacher, TeacherSource, Term
from distill.errors import ConfigError, DistillError
from distill.losses import LOSSES, FitNetLoss, KDLoss, build_loss
from distill.projectors import PROJECTORS
from distill.registry import Registry
from distill.schedules import SCHEDULES, LinearWarmup
from distill.taps import FeatureTaps
from distill.tasks import TASKS, Batch, ClassificationTask, Task
from distill.train import TrainConfig, Trainer

__all__ = [
    "Batch",
    "ClassificationTask",
    "ConfigError",
    "Distiller",
    "DistillError",
    "DistillStep",
    "FeatureTaps",
    "FitNetLoss",
    "KDLoss",
    "LOSSES",
    "LinearWarmup",
    "OnlineTeacher",
    "PROJECTORS",
    "Registry",
    "Run",
    "SCHEDULES",
    "TASKS",
    "Task",
    "TeacherSource",
    "Term",
    "TrainConfig",
    "Trainer",
    "build_loss",
    "open_run",
]
