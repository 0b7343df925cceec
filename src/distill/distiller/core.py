"""The :class:`Distiller`: student side + frozen teacher + terms, set up from one example batch (the dry
run) and called once per micro-batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from distill.distiller.student import DistillStep, StudentSide
from distill.distiller.teacher import OnlineTeacher, TeacherSource, _cast_floating
from distill.distiller.terms import (
    Term,
    _as_list,
    _extras_for,
    _module_taps,
    _pick,
    _teacher_pick,
)
from distill.errors import DistillError, first_line, is_allocation_failure
from distill.losses.base import contract_of
from distill.projectors import build_projector
from distill.schedules import Schedule
from distill.taps import FeatureTaps
from distill.tasks.base import Batch, Task


class ExampleRunError(DistillError):
    """The student or teacher failed on the example batch of a dry run (:meth:`Distiller.setup`).

    ``role`` is ``student`` or ``teacher``, ``inputs`` the inputs' shape (a list) or type name, ``reason``
    the first line of the model's error; the recipe builder names the model in its message.
    """

    def __init__(self, role: str, inputs: Any, reason: str, allocation: bool = False) -> None:
        self.role, self.inputs, self.reason = role, inputs, reason
        self.allocation = allocation  # the inputs did not fit in memory (see is_allocation_failure)
        super().__init__(
            f"{role} cannot run on the data's inputs {inputs} ({reason}); "
            "check the model's options (image_size, in_channels) against the data"
        )


def _forward(role: str, batch: Batch, dry_run: bool, forward: Callable[[], Any]) -> Any:
    """``forward()``; in a dry run a model error becomes one line naming the role (and the inputs' shape)."""
    if not dry_run:
        return forward()
    try:
        return forward()
    except ExampleRunError:
        raise
    except DistillError as err:
        raise DistillError(f"{role}: {err}") from None
    except (RuntimeError, ValueError, TypeError, IndexError, MemoryError, OverflowError) as err:
        x = batch.inputs
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ExampleRunError(role, shape, first_line(err), is_allocation_failure(err)) from None


def _call_once(
    loss: nn.Module, name: str, projector: nn.Module, s: Any, t: Any, extras: Any
) -> None:
    """Call the loss once on the example's tensors, so what it refuses (a YOLO26 head for ``ld``, maps it
    cannot pair) fails before ``--overwrite`` clears a run, not at the first step."""
    s = [projector(x) for x in s] if isinstance(s, list) else projector(s)
    try:
        loss(s, t, **extras)
    except DistillError as err:
        raise DistillError(f"term {name!r}: {err}") from None
    except (ValueError, TypeError, RuntimeError, IndexError) as err:
        line = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise DistillError(f"term {name!r}: {line}") from None


class Distiller(nn.Module):
    """Student + frozen teacher + terms. ``forward(batch, epoch)`` returns a :class:`DistillStep`.

    With no teacher and no terms it trains the student on the task loss alone (the scratch baseline), so
    one trainer serves every run. ``trainable_parameters()`` is student + projectors + loss parameters.
    """

    def __init__(
        self,
        student: nn.Module,
        task: Task,
        teacher: nn.Module | None = None,
        terms: Sequence[Term] = (),
        task_weight: float | Schedule = 1.0,
        source: TeacherSource | None = None,
    ) -> None:
        super().__init__()
        terms = list(terms)
        if terms and teacher is None and source is None:
            raise DistillError(
                "distillation terms need a teacher; pass teacher=... or remove the terms"
            )
        if not isinstance(task, Task):
            raise DistillError(
                f"task {type(task).__name__} does not subclass distill.tasks.Task; derive it from Task "
                "(its optional hooks then have defaults)"
            )
        self.task = task
        task.bind(student)  # a task whose loss is the student's own (detection) builds it here
        self.teacher = teacher
        self._teacher_dtype: torch.dtype | None = None  # set by cast_teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self.source = source or (OnlineTeacher(teacher, task) if teacher is not None else None)
        self.student_side = StudentSide(student, task, terms, task_weight)
        self._unwrapped = self.student_side
        self.teacher_taps = list(dict.fromkeys(t for term in terms for t in _as_list(term.teacher)))
        if teacher is not None:  # check module names now, not an hour into training
            FeatureTaps(teacher, _module_taps(self.teacher_taps))
        FeatureTaps(student, self.student_side.student_taps)
        self._needs_setup = any(
            isinstance(t.projector, str) or contract_of(t.loss).builds for t in terms
        )

    @property
    def student(self) -> nn.Module:
        return self._unwrapped.student

    @property
    def terms(self) -> list[Term]:
        return self._unwrapped.terms

    def cast_teacher(self, dtype: torch.dtype) -> None:
        """Keep the frozen teacher's weights in ``dtype`` (bfloat16/float16 halve its memory); its floating
        inputs are cast to ``dtype`` on the way in, and the online source hands its outputs to the losses
        in float32. float32 (or no teacher) leaves everything as it is."""
        if self.teacher is None or dtype == torch.float32:
            return
        self.teacher.to(dtype)
        if self._teacher_dtype is None:  # one input cast, however often called
            self.teacher.register_forward_pre_hook(self._cast_teacher_inputs, with_kwargs=True)
        self._teacher_dtype = dtype
        if isinstance(self.source, OnlineTeacher):
            self.source.upcast = True

    def _cast_teacher_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple:
        return _cast_floating(args, self._teacher_dtype), _cast_floating(
            kwargs, self._teacher_dtype
        )

    def trainable(self) -> StudentSide:
        """The unwrapped trainable module (what checkpoints save)."""
        return self._unwrapped

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self._unwrapped.parameters() if p.requires_grad]

    def parallelize(self, wrap: Any) -> None:
        """Wrap only the trainable part, e.g. ``distiller.parallelize(lambda m: DDP(m))``.

        From then on a task loss weighted 0 (``task_weight`` ramped from 0) is still computed and added
        times 0, so every parameter the step reaches is the same whatever the weights: DDP fails at the
        next step when a parameter got no gradient.
        """
        self._unwrapped.zero_weights_in_graph = True
        self.student_side = wrap(self._unwrapped)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # never leaves eval mode: BN statistics and dropout stay frozen
        return self

    def setup(
        self,
        example_batch: Any,
        dry_run: bool = False,
        check_outputs: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], None]
        | None = None,
        **context: Any,
    ) -> None:
        """Build named projectors from the feature shapes of one example batch and check term shapes.

        Losses with trainable parts sized by the data (embedding heads, connectors, memory banks) define
        ``build(student, teacher, **context)``; it is called here once with the (projected) example
        tensors and ``context`` (the trainer passes ``num_samples``, the training set size), so their
        parameters exist before the optimizer is built and before a checkpoint is loaded.

        With ``dry_run`` nothing is kept (the check the recipe builder runs before anything is written):
        the student and teacher run in eval mode under a forked RNG, a model that cannot take the inputs
        raises :class:`ExampleRunError`, projectors are built and dropped, each loss without ``build`` is
        called once on the example's tensors (with the batch extras it declares), and weights, train/eval
        modes and the RNG are left as they were. ``check_outputs(student_outputs, teacher_outputs)`` is
        called between the forward passes and the term checks.
        """
        batch = self.task.split(example_batch)
        side = self._unwrapped
        param = next(side.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        batch = batch.to(device)
        was_training = side.training
        side.eval()
        try:
            with torch.random.fork_rng(devices=[], enabled=dry_run):
                self._setup_terms(batch, device, dry_run, check_outputs, context)
        finally:
            side.train(was_training)
        if not dry_run:
            self._needs_setup = False

    def _example_outputs(
        self, batch: Batch, dry_run: bool
    ) -> tuple[dict[str, torch.Tensor], FeatureTaps, dict[str, torch.Tensor]]:
        """Student outputs, student taps and teacher outputs on ``batch`` (no grad)."""
        side = self._unwrapped
        with torch.no_grad(), FeatureTaps(side.student, side.student_taps) as taps:
            outputs = _forward(
                "student", batch, dry_run, lambda: self.task.forward(side.student, batch.inputs)
            )
        teacher_outputs: dict[str, torch.Tensor] = {}
        source = self.source
        if source is not None:
            with torch.no_grad():
                teacher_outputs = _forward(
                    "teacher", batch, dry_run, lambda: source.outputs(batch, self.teacher_taps)
                )
        return outputs, taps, teacher_outputs

    def _setup_terms(
        self,
        batch: Batch,
        device: torch.device,
        dry_run: bool,
        check_outputs: Callable[..., None] | None,
        context: dict[str, Any],
    ) -> None:
        side = self._unwrapped
        outputs, taps, teacher_outputs = self._example_outputs(batch, dry_run)
        if check_outputs is not None:
            check_outputs(outputs, teacher_outputs)
        projectors = list(side.projectors)
        for i, term in enumerate(side.terms):
            extras = _extras_for(term.loss, batch, side.names[i]) if dry_run else {}
            s = _pick(term.student, outputs, taps, "student")
            t = _teacher_pick(term.teacher, teacher_outputs)
            if isinstance(term.projector, str):
                one_s, one_t = (s[0], t[0]) if isinstance(s, list) else (s, t)
                projectors[i] = build_projector(term.projector, one_s.shape, one_t.shape).to(device)
                if not dry_run:
                    side.projectors[i] = projectors[i]
                    term.projector = projectors[i]
            elif (
                contract_of(term.loss).needs_same_shape
                and not isinstance(s, list)
                and not isinstance(t, list)
                and isinstance(projectors[i], nn.Identity)
                and s.shape != t.shape
            ):
                raise DistillError(
                    f"term {side.names[i]!r}: student {term.student!r} has shape {tuple(s.shape)} but teacher "
                    f"{term.teacher!r} has {tuple(t.shape)}; add a projector (conv1x1 for feature maps, "
                    "linear for vectors)"
                )
            if dry_run and not contract_of(term.loss).builds:
                with torch.no_grad():
                    _call_once(term.loss, side.names[i], projectors[i], s, t, extras)
        if dry_run:  # losses with parts built from data are checked when the real setup builds them
            return
        for i, term in enumerate(side.terms):
            if contract_of(term.loss).builds:
                s = _pick(term.student, outputs, taps, "student")
                with torch.no_grad():
                    p = side.projectors[i]
                    s = [p(x) for x in s] if isinstance(s, list) else p(s)
                term.loss.build(s, _teacher_pick(term.teacher, teacher_outputs), **context)
                term.loss.to(device)

    def forward(self, batch: Batch, epoch: float = 0.0, step: int = 0) -> DistillStep:
        """The loss of ``batch`` at ``epoch`` (fractional, for weight schedules); ``step`` (the optimizer
        step) goes to the source, which may train on another batch (:meth:`TeacherSource.batch`)."""
        if self._needs_setup:
            raise DistillError(
                "this distiller has named projectors or losses built from data; "
                "call distiller.setup(example_batch) first"
            )
        if self.source is None:
            return self.student_side(batch, {}, epoch)
        given = batch
        if self.terms:  # the augmentation-aware cache: the stored view both models read
            batch = self.source.view(batch, epoch)
        batch, metrics = self.source.batch(batch, self._unwrapped.student, step)
        teacher_outputs = self.source.outputs(batch, self.teacher_taps) if self.terms else {}
        result = self.student_side(batch, teacher_outputs, epoch)
        result.metrics = metrics
        result.batch = batch if batch is not given else None
        return result
