"""Terms, teacher-output sources and the Distiller: the one module that turns a batch into a loss
(``terms``: taps and terms; ``teacher``: the teacher-output sources; ``student``: the trainable side;
``core``: the Distiller).

>>> distiller = Distiller(student, task, teacher=teacher,
...                       terms=[Term(KDLoss(4.0), weight=0.9)], task_weight=0.1)
>>> step = distiller(batch, epoch=0.0)
>>> step.loss.backward()          # step.parts holds each weighted term for logging
"""

from distill.distiller.core import Distiller, ExampleRunError
from distill.distiller.student import DistillStep, StudentSide, _add, _weighted
from distill.distiller.teacher import OnlineTeacher, TeacherSource
from distill.distiller.terms import TapSpec, Term

__all__ = [
    "DistillStep",
    "Distiller",
    "ExampleRunError",
    "OnlineTeacher",
    "StudentSide",
    "TapSpec",
    "TeacherSource",
    "Term",
    "_add",
    "_weighted",
]
