"""Distiller: frozen teacher, trainable parameters, projectors, tap checks, parts, weights, extras."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from distill.distiller import Distiller, Term
from distill.errors import DistillError
from distill.losses import FitNetLoss, KDLoss, kd_loss
from distill.projectors import ConvProjector
from distill.schedules import LinearWarmup
from distill.taps import TapError
from distill.tasks import ClassificationTask

NUM_CLASSES = 4


def make_net(width, dropout=0.0):
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, width, 3, padding=1),
            bn1=nn.BatchNorm2d(width),
            relu1=nn.ReLU(),
            feat=nn.Conv2d(width, width, 3, padding=1),
            relu2=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            drop=nn.Dropout(dropout),
            fc=nn.Linear(width, NUM_CLASSES),
        )
    )


@pytest.fixture
def nets():
    torch.manual_seed(0)
    teacher = make_net(
        8, dropout=0.5
    )  # dropout: would change outputs if the teacher left eval mode
    student = make_net(4)
    return teacher, student


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 6, 6, generator=g)
    y = torch.randint(0, NUM_CLASSES, (6,), generator=g)
    return (x, y, torch.arange(10, 16))


def kd_fitnet(teacher, student, **kw):
    terms = [
        Term(KDLoss(4.0), weight=0.9),
        Term(FitNetLoss(), student="feat", teacher="feat", projector="conv1x1", weight=10.0),
    ]
    return Distiller(
        student, ClassificationTask(), teacher=teacher, terms=terms, task_weight=0.1, **kw
    )


def clone_state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_teacher_frozen_through_training(nets, batch):
    teacher, student = nets
    distiller = kd_fitnet(teacher, student)
    distiller.setup(batch)
    teacher_before, student_before = clone_state(teacher), clone_state(student)
    optimizer = torch.optim.SGD(
        distiller.trainable_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3
    )
    distiller.train()
    task = distiller.task
    for _ in range(3):
        step = distiller(task.split(batch), epoch=0.5)
        optimizer.zero_grad()
        step.loss.backward()
        optimizer.step()
    for k, v in clone_state(teacher).items():  # weights and BN running statistics
        assert torch.equal(v, teacher_before[k]), k
    assert any(not torch.equal(v, student_before[k]) for k, v in clone_state(student).items())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())


def test_train_mode_keeps_teacher_in_eval(nets):
    teacher, student = nets
    teacher.train()
    distiller = kd_fitnet(teacher, student)
    assert not teacher.training  # construction puts it in eval mode
    distiller.train()
    assert student.training and distiller.training
    assert not teacher.training
    assert not any(m.training for m in teacher.modules())
    distiller.eval()
    assert not student.training and not teacher.training


def test_a_teacher_module_put_in_train_mode_is_back_in_eval_at_the_next_step(nets, batch):
    teacher, student = nets
    distiller = kd_fitnet(teacher, student)
    distiller.setup(batch)
    split = ClassificationTask().split(batch)
    distiller(split)
    inner = next(m for m in teacher.modules() if m is not teacher)
    inner.train()  # e.g. a user's hook or callback; BN statistics would drift
    distiller(split)
    assert not any(m.training for m in teacher.modules())


def test_teacher_outputs_reach_losses_without_graph(nets, batch):
    teacher, student = nets
    seen = {}

    class Spy(nn.Module):
        def forward(self, s, t):
            seen["s"], seen["t"] = s, t
            return kd_loss(s, t)

    distiller = Distiller(student, ClassificationTask(), teacher=teacher, terms=[Term(Spy())])
    distiller.train()
    distiller(ClassificationTask().split(batch))
    assert seen["s"].requires_grad
    assert not seen["t"].requires_grad
    with torch.no_grad():
        expected = teacher(batch[0])  # eval mode: deterministic despite dropout
    torch.testing.assert_close(seen["t"], expected)


def test_trainable_parameters(nets, batch):
    teacher, student = nets
    distiller = kd_fitnet(teacher, student)
    ids = {id(p) for p in distiller.trainable_parameters()}
    assert ids == {id(p) for p in student.parameters()}  # no projector yet: built by setup
    assert not ids & {id(p) for p in teacher.parameters()}
    distiller.setup(batch)
    projector = distiller.terms[1].projector
    assert isinstance(projector, ConvProjector)
    proj_ids = {id(p) for p in projector.parameters()}
    assert proj_ids
    ids = {id(p) for p in distiller.trainable_parameters()}
    assert ids == {id(p) for p in student.parameters()} | proj_ids
    assert not ids & {id(p) for p in teacher.parameters()}


def test_string_projector_built_in_setup(nets, batch):
    teacher, student = nets
    distiller = kd_fitnet(teacher, student)
    task = ClassificationTask()
    with pytest.raises(DistillError, match="setup"):
        distiller(task.split(batch))  # named projector not built yet
    distiller.setup(batch)
    projector = distiller.terms[1].projector
    assert projector.conv.in_channels == 4 and projector.conv.out_channels == 8
    assert distiller.trainable().projectors[1] is projector
    step = distiller(task.split(batch))
    assert set(step.parts) == {"task", "kd", "fitnet"}
    assert torch.isfinite(step.loss)


def test_mismatched_shapes_without_projector_fail_in_setup(nets, batch):
    teacher, student = nets
    distiller = Distiller(
        student,
        ClassificationTask(),
        teacher=teacher,
        terms=[Term(FitNetLoss(), student="feat", teacher="feat")],
    )
    with pytest.raises(DistillError, match="projector") as info:
        distiller.setup(batch)
    assert "(6, 4, 6, 6)" in str(info.value) and "(6, 8, 6, 6)" in str(info.value)


def test_equal_shapes_need_no_projector(nets, batch):
    teacher, _ = nets
    torch.manual_seed(1)
    student = make_net(8)
    distiller = Distiller(
        student,
        ClassificationTask(),
        teacher=teacher,
        terms=[Term(FitNetLoss(), student="feat:in", teacher="feat:in")],
    )
    distiller.setup(batch)
    step = distiller(ClassificationTask().split(batch))
    assert step.parts["fitnet"] > 0


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_unknown_module_tap_fails_at_construction(nets, side):
    teacher, student = nets
    term = Term(
        FitNetLoss(), **{"student": "feat", "teacher": "feat", side: "faet"}, projector="conv1x1"
    )
    with pytest.raises(TapError, match=r"'faet'.*Did you mean .*'feat'"):
        Distiller(student, ClassificationTask(), teacher=teacher, terms=[term])


def test_unknown_output_tap(nets, batch):
    teacher, student = nets
    task = ClassificationTask()
    distiller = Distiller(
        student, task, teacher=teacher, terms=[Term(KDLoss(), student="@nonsense")]
    )
    with pytest.raises(DistillError) as info:
        distiller(task.split(batch))
    assert "'@nonsense'" in str(info.value) and "@logits" in str(info.value)
    with pytest.raises(DistillError, match="@nonsense"):
        distiller.setup(batch)
    distiller = Distiller(student, task, teacher=teacher, terms=[Term(KDLoss(), teacher="@logit")])
    with pytest.raises(DistillError, match="Did you mean 'logits'"):
        distiller(task.split(batch))


def test_parts_and_total(nets, batch):
    teacher, student = nets
    task = ClassificationTask()
    terms = [
        Term(KDLoss(4.0), weight=0.5),
        Term(KDLoss(2.0), weight=2.0),
        Term(KDLoss(1.0), name="soft"),
    ]
    distiller = Distiller(student, task, teacher=teacher, terms=terms, task_weight=0.25)
    distiller.eval()
    split = task.split(batch)
    step = distiller(split)
    assert list(step.parts) == ["task", "kd", "kd_2", "soft"]
    torch.testing.assert_close(step.loss, sum(step.parts.values()))
    s = student(batch[0])
    with torch.no_grad():
        t = teacher(batch[0])
    torch.testing.assert_close(step.parts["task"], 0.25 * nn.functional.cross_entropy(s, batch[1]))
    torch.testing.assert_close(step.parts["kd"], 0.5 * kd_loss(s, t, 4.0))
    torch.testing.assert_close(step.parts["kd_2"], 2.0 * kd_loss(s, t, 2.0))
    torch.testing.assert_close(step.parts["soft"], kd_loss(s, t, 1.0))
    torch.testing.assert_close(step.outputs["logits"], s)


def test_schedules_apply(nets, batch):
    teacher, student = nets
    task = ClassificationTask()
    distiller = Distiller(
        student,
        task,
        teacher=teacher,
        terms=[Term(KDLoss(4.0), weight=LinearWarmup(value=2.0, warmup_epochs=2.0))],
        task_weight=LinearWarmup(value=1.0, warmup_epochs=1.0),
    )
    distiller.eval()
    split = task.split(batch)
    with torch.no_grad():
        raw = kd_loss(student(batch[0]), teacher(batch[0]), 4.0)
        at0 = distiller(split, epoch=0.0)
        at1 = distiller(split, epoch=1.0)
        at9 = distiller(split, epoch=9.0)
    assert at0.parts["kd"].item() == 0.0
    assert "task" not in at0.parts  # a zero task weight skips the task loss
    assert at0.loss.item() == 0.0
    torch.testing.assert_close(at1.parts["kd"], 1.0 * raw)
    torch.testing.assert_close(at9.parts["kd"], 2.0 * raw)
    assert "task" in at1.parts


def test_terms_need_a_teacher(nets):
    _, student = nets
    with pytest.raises(DistillError, match="teacher"):
        Distiller(student, ClassificationTask(), terms=[Term(KDLoss())])


def test_no_teacher_no_terms_is_task_only(nets, batch):
    _, student = nets
    task = ClassificationTask()
    distiller = Distiller(student, task)
    distiller.eval()
    step = distiller(task.split(batch))
    assert list(step.parts) == ["task"]
    torch.testing.assert_close(step.loss, nn.functional.cross_entropy(student(batch[0]), batch[1]))


class IndexLoss(nn.Module):
    extra_inputs = ("index",)

    def __init__(self):
        super().__init__()
        self.received = None

    def forward(self, student, teacher, index):
        self.received = index
        return (student - teacher).pow(2).mean() * 0 + index.float().mean()


def test_extra_inputs_delivered(nets, batch):
    teacher, student = nets
    task = ClassificationTask()
    loss = IndexLoss()
    distiller = Distiller(student, task, teacher=teacher, terms=[Term(loss, name="idx")])
    step = distiller(task.split(batch))
    assert torch.equal(loss.received, batch[2])
    assert step.parts["idx"].item() == pytest.approx(12.5)
    # dict batches too
    distiller(task.split({"image": batch[0], "label": batch[1], "index": batch[2] + 1}))
    assert torch.equal(loss.received, batch[2] + 1)


def test_missing_extra_input(nets, batch):
    teacher, student = nets
    task = ClassificationTask()
    distiller = Distiller(student, task, teacher=teacher, terms=[Term(IndexLoss(), name="idx")])
    with pytest.raises(DistillError, match="index") as info:
        distiller(task.split(batch[:2]))
    assert "'idx'" in str(info.value)
