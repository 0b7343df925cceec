"""The written-down contracts: Task, the dataset protocols, DistillLoss and TeacherSource are base classes
or protocols with real defaults, and the callers use them instead of asking what an object is."""

from __future__ import annotations

import ast
import inspect
import io

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

import distill.teacher_cache
from distill.data.base import (
    BatchingDataset,
    DistillDataset,
    ImageDataset,
    LabelledDataset,
    SizedByLength,
    TextData,
    eval_loader,
    make_loader,
    model_inputs,
)
from distill.data.tensor import TensorDataset
from distill.data.text import TextDataset
from distill.distiller import Distiller, OnlineTeacher, TeacherSource, Term
from distill.errors import DistillError
from distill.losses import KDLoss
from distill.losses.base import DistillLoss, contract_of
from distill.tasks import ClassificationTask, DetectionTask, Task, TextClassificationTask
from distill.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def data(n: int = 24, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    )


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def test_task_hooks_have_defaults_and_shipped_tasks_declare_theirs():
    task = Task()
    assert task.bind(net(0)) is None and task.request(["@logits"]) is None
    assert (task.augments_in_loader, task.latency_batch, task.classifies) == (False, None, False)
    assert DetectionTask.augments_in_loader and DetectionTask.latency_batch == 16
    assert ClassificationTask.classifies and TextClassificationTask.classifies
    assert not DetectionTask.classifies


def test_a_task_that_is_not_a_task_is_refused_by_name():
    class Duck:
        name, primary_metric = "duck", "none"

    with pytest.raises(DistillError, match="Duck does not subclass distill.tasks.Task"):
        Distiller(net(0), Duck())  # type: ignore[arg-type]


class Spy(TeacherSource):
    """A teacher source recording the trainer's prepare call."""

    def __init__(self, teacher: nn.Module, task: Task) -> None:
        self.online = OnlineTeacher(teacher, task)
        self.prepared: list[tuple] = []

    def prepare(self, train_data, batch_size, console, is_main) -> None:
        self.prepared.append((train_data, batch_size, is_main))

    def outputs(self, batch, taps):
        return self.online.outputs(batch, taps)


def test_the_trainer_prepares_whatever_source_the_distiller_has(tmp_path):
    task, teacher, train = ClassificationTask(), net(1), data()
    spy = Spy(teacher, task)
    distiller = Distiller(net(0), task, teacher, [Term(KDLoss(2.0))], source=spy)
    config = TrainConfig(epochs=1, batch_size=8, eval_batch_size=12, progress=False, device="cpu")
    trainer = Trainer(distiller, train, None, config, tmp_path, console=Console(file=io.StringIO()))
    trainer.prepare()
    trainer.prepare()  # once
    assert spy.prepared == [(train, 12, True)]
    assert OnlineTeacher(teacher, task).prepare(train, 12, None, True) is None  # nothing to do


def test_the_teacher_cache_does_not_import_the_trainer():
    tree = ast.parse(inspect.getsource(distill.teacher_cache))
    imported = [
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    ]
    assert not [m for m in imported if m.startswith("distill.train")], imported


def test_loss_contract_declared_once_and_read_from_plain_modules_too():
    class Plain(DistillLoss):
        def forward(self, student, teacher):
            return (student - teacher).pow(2).mean()

    class Built(Plain):
        extra_inputs = ("labels",)
        needs_same_shape = False

        def build(self, student, teacher, **context) -> None:
            self.head = nn.Linear(student.shape[-1], teacher.shape[-1])

    assert contract_of(Plain()) == contract_of(KDLoss()) and not Plain.builds
    assert Plain.example_inputs(2, torch.Generator()) is None
    built = contract_of(Built())
    assert (built.extra_inputs, built.needs_same_shape, built.builds) == (("labels",), False, True)

    class Foreign(nn.Module):  # not a DistillLoss: the same names, read in contract_of
        extra_inputs = ("index",)

        def build(self, student, teacher, **context) -> None: ...

    foreign = contract_of(Foreign())
    assert (foreign.extra_inputs, foreign.needs_same_shape, foreign.builds) == (
        ("index",),
        True,
        True,
    )
    assert not contract_of(nn.MSELoss()).builds


def test_dataset_protocols_name_what_distill_reads():
    images = data()
    assert isinstance(images, ImageDataset) and isinstance(images, DistillDataset)
    assert not isinstance(images, TextData) and not isinstance(images, SizedByLength)
    text = TextDataset(["a b", "c"], [0, 1], ["neg", "pos"])
    assert isinstance(text, TextData) and isinstance(text, SizedByLength)
    assert not isinstance(text, ImageDataset)
    assert model_inputs(images) == (3, 1) and model_inputs(text) == (2, 3)
    plain = torch.utils.data.TensorDataset(torch.zeros(4, 2))
    assert not isinstance(plain, BatchingDataset) and not isinstance(plain, LabelledDataset)
    assert model_inputs(plain) == (None, 3) and isinstance(eval_loader(plain, 2), DataLoader)
    assert isinstance(make_loader(plain, 2, None), torch.utils.data.DataLoader)
    plain.num_classes = 5  # a plugin's dataset needs only what a rule reads
    assert isinstance(plain, LabelledDataset) and model_inputs(plain) == (5, 3)
    assert [len(b["index"]) for b in eval_loader(images, 16)] == [16, 8]
    batches = list(make_loader(images, 10, None))  # its own loader: dict batches with indices
    assert [len(b["index"]) for b in batches] == [10, 10, 4]


def test_option_checks_share_one_message():
    from distill.losses import build_loss

    for value in (0, -1.0):
        with pytest.raises(
            ValueError, match=r"^kd: temperature must be > 0, got .*; typical values"
        ):
            build_loss("kd", temperature=value)
    # NaN (and values that overflow float32) are refused by build_loss before the loss sees them
    with pytest.raises(
        ValueError, match=r"^loss 'kd': temperature=nan is outside \[0.0001, 10000\]"
    ):
        build_loss("kd", temperature=float("nan"))
    with pytest.raises(ValueError, match=r"^ttm: temperature must be > 0, got 0; the paper uses 2"):
        build_loss("ttm", temperature=0)
    assert build_loss("cwd", tau=2).tau == 2.0
