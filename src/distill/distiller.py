"""Terms, teacher-output sources and the Distiller: the one module that turns a batch into a loss.

>>> distiller = Distiller(student, task, teacher=teacher,
...                       terms=[Term(KDLoss(4.0), weight=0.9)], task_weight=0.1)
>>> step = distiller(batch, epoch=0.0)
>>> step.loss.backward()          # step.parts holds each weighted term for logging
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError, did_you_mean, first_line, is_allocation_failure
from distill.losses.base import contract_of
from distill.projectors import build_projector
from distill.schedules import Schedule, weight_at
from distill.taps import FeatureTaps
from distill.tasks.base import Batch, Task

TapSpec = str | Sequence[str]


@dataclass
class Term:
    """One loss wired between a student tap and a teacher tap.

    Taps starting with ``@`` name task outputs (``@logits``); others name modules (``layer2``, or
    ``layer2:in`` for the module's input). A list of taps hands the loss a list of tensors (multi-level
    methods). ``projector`` is a module, a registered name (``conv1x1``, ``linear``) built from the shapes
    of an example batch, or ``None``.
    """

    loss: nn.Module
    student: TapSpec = "@logits"
    teacher: TapSpec = "@logits"
    weight: float | Schedule = 1.0
    projector: nn.Module | str | None = None
    name: str | None = None


def _as_list(spec: TapSpec) -> list[str]:
    return [spec] if isinstance(spec, str) else list(spec)


def _module_taps(specs: Sequence[TapSpec]) -> list[str]:
    return [t for s in specs for t in _as_list(s) if not t.startswith("@")]


def _pick(spec: TapSpec, outputs: dict[str, torch.Tensor], taps: FeatureTaps | dict, who: str):
    """Tensors for a tap spec: ``@name`` from the task ``outputs`` (keys without ``@``), else from ``taps``."""

    def one(tap: str) -> torch.Tensor:
        if tap.startswith("@"):
            if tap[1:] not in outputs:
                raise DistillError(
                    f"{who} tap {tap!r} is not an output of this task.{did_you_mean(tap[1:], outputs)} "
                    f"Outputs: {', '.join('@' + k for k in outputs)}"
                )
            return outputs[tap[1:]]
        return taps[tap]

    return one(spec) if isinstance(spec, str) else [one(t) for t in spec]


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


def _teacher_pick(spec: TapSpec, teacher_outputs: dict[str, torch.Tensor]):
    outputs = {k[1:]: v for k, v in teacher_outputs.items() if k.startswith("@")}
    return _pick(spec, outputs, teacher_outputs, "teacher")


@dataclass
class DistillStep:
    """What one forward gives: the total ``loss``, each weighted part (``task``, term names), outputs, and
    what the teacher source changed (:meth:`TeacherSource.batch`)."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    batch: Batch | None = None  # the batch trained on, when the source replaced the given one
    metrics: dict[str, float] = field(default_factory=dict)  # the source's numbers (mode, timings)


class StudentSide(nn.Module):
    """Everything trainable: the student, the projectors and any loss parameters.

    This is the part a data-parallel wrapper (DDP) wraps; the teacher stays outside.
    """

    def __init__(
        self, student: nn.Module, task: Task, terms: list[Term], task_weight: float | Schedule
    ) -> None:
        super().__init__()
        self.student = student
        self.task = task
        self.terms = terms
        self.task_weight = task_weight
        self.losses = nn.ModuleList(t.loss for t in terms)
        self.projectors = nn.ModuleList(
            t.projector if isinstance(t.projector, nn.Module) else nn.Identity() for t in terms
        )
        self.names = _term_names(terms)
        self.student_taps = _module_taps([t.student for t in terms])
        # what each loss reads from the batch besides the two tensors, read once
        self.extra_inputs = [contract_of(t.loss).extra_inputs for t in terms]
        # a task loss weighted 0 is skipped, unless every parameter must take part in every backward
        # (DDP waits for a gradient of each one; set by Distiller.parallelize)
        self.zero_weights_in_graph = False

    def forward(
        self, batch: Batch, teacher_outputs: dict[str, torch.Tensor], epoch: float
    ) -> DistillStep:
        taps: FeatureTaps | dict = {}
        if self.student_taps:
            with FeatureTaps(self.student, self.student_taps) as taps:
                outputs = self.task.forward(self.student, batch.inputs)
        else:
            outputs = self.task.forward(self.student, batch.inputs)
        parts: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None  # float32 at least: the sum of the parts from 0.0
        w_task = weight_at(self.task_weight, epoch)
        if w_task:
            parts["task"] = _weighted(w_task, self.task.loss(outputs, batch))
            total = _add(total, parts["task"])
        elif (
            self.zero_weights_in_graph
        ):  # DDP: the parameters only the task loss reaches get a 0 gradient
            total = _add(total, 0.0 * self.task.loss(outputs, batch))
        for term, name, loss, projector, wanted in zip(
            self.terms, self.names, self.losses, self.projectors, self.extra_inputs, strict=True
        ):
            w = weight_at(term.weight, epoch)
            student = _pick(term.student, outputs, taps, "student")
            teacher = _teacher_pick(term.teacher, teacher_outputs)
            if not isinstance(projector, nn.Identity):  # no projector: the tensors as they are
                student = (
                    projector(student)
                    if not isinstance(student, list)
                    else [projector(s) for s in student]
                )
            extras = _extras_for(loss, batch, name, wanted) if wanted else {}
            parts[name] = _weighted(w, loss(student, teacher, **extras))
            total = _add(total, parts[name])
        if total is None:
            total = outputs[next(iter(outputs))].new_zeros((), dtype=torch.float32)
        return DistillStep(total, parts, outputs)


def _weighted(weight: float, loss: torch.Tensor) -> torch.Tensor:
    """``weight * loss``; a weight of 1 leaves the tensor as it is (the same values, one op fewer)."""
    return loss if weight == 1.0 else weight * loss


def _add(total: torch.Tensor | None, part: torch.Tensor) -> torch.Tensor:
    """``total + part``, where no total yet is a float32 zero: the first part, in float32 when it is
    in a lower precision (``0.0 + part`` gives the same values without the op)."""
    if total is not None:
        return total + part
    return part.float() if part.dtype in (torch.float16, torch.bfloat16) else part


def _term_names(terms: Sequence[Term]) -> list[str]:
    names: list[str] = []
    for term in terms:
        base = term.name or type(term.loss).__name__.removesuffix("Loss").lower() or "term"
        name, i = base, 2
        while name in names or name == "task":
            name, i = f"{base}_{i}", i + 1
        names.append(name)
    return names


def _extras_for(
    loss: nn.Module, batch: Batch, name: str, wanted: Sequence[str] | None = None
) -> dict[str, Any]:
    """What ``loss`` reads from ``batch`` besides the tensors (``wanted``: its ``extra_inputs``,
    when the caller has them)."""
    wanted = contract_of(loss).extra_inputs if wanted is None else wanted
    missing = [k for k in wanted if k not in batch.extras]
    if missing:
        raise DistillError(
            f"term {name!r} needs {missing} from the batch, which carries only {sorted(batch.extras)}; "
            + (
                "ground-truth boxes come with task: detection and a detection dataset"
                if any(k.startswith("box") for k in missing)
                else "use a dataset that provides them (distill's datasets return 'index' and 'label')"
            )
        )
    return {k: batch.extras[k] for k in wanted}


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
