"""Image (or any vector) classification: ``model(x) -> logits (B, C)``, cross-entropy, top-k, NLL, ECE."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.tasks import TASKS
from distill.tasks.base import Batch, Task, TeacherPredictions


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): confidence-accuracy gap averaged over equal-width confidence bins."""
    confidence, predicted = probs.max(dim=1)
    correct = predicted.eq(labels).float()
    edges = torch.linspace(0, 1, bins + 1, device=probs.device)
    which = torch.bucketize(confidence, edges[1:-1], right=True)  # 0..bins-1
    conf_sum = torch.bincount(which, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(which, weights=correct, minlength=bins)
    return float((conf_sum - acc_sum).abs().sum() / labels.numel())


# the label of a row without one (a transfer set's, distill/data/transfer.py): left out of the task loss
UNLABELLED = -1
_NO_LABEL = torch.iinfo(torch.int64).min  # an ignore_index no label can hold


def checked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float, fix: str
) -> torch.Tensor:
    """Cross-entropy in float32 over the labelled rows (a label of :data:`UNLABELLED` is left out; a
    batch without labelled rows gives 0); a label outside the model's ``C`` classes is a DistillError
    ending in ``fix``.

    On the CPU the kernel checks the labels itself (an ``IndexError``, nothing computed), so a batch goes
    through the checks below, and their host read, only when it refuses one: transfer rows or a bad
    label. Elsewhere a bad label is a device-side assert that ends the process, so it is checked first."""
    if targets.numel() and logits.device.type == "cpu" and not targets.is_floating_point():
        try:  # no label is ignored: -100, like any label outside the classes, is refused
            return F.cross_entropy(
                logits.float(), targets, label_smoothing=label_smoothing, ignore_index=_NO_LABEL
            )
        except IndexError:
            pass
    if targets.numel():
        low, high = torch.stack(torch.aminmax(targets)).tolist()  # one host sync, not two
        if low == UNLABELLED:  # a transfer set's batch: the task loss sees the labelled rows only
            labelled = targets != UNLABELLED
            if not bool(labelled.any()):
                return logits.float().sum() * 0.0
            logits, targets = logits[labelled], targets[labelled]
            low = int(targets.min())
        if high >= logits.shape[-1] or low < 0:
            bad = high if high >= logits.shape[-1] else low
            raise DistillError(
                f"label {bad} is out of range for a model with {logits.shape[-1]} classes; {fix}"
            )
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


@dataclass
class MixedTargets:
    """Targets of a mixed batch: sample ``i`` is ``lam`` of class ``labels[i]`` and ``1 - lam`` of class
    ``partner[i]`` (both ``(B,)``). Cross-entropy is linear in the target, so the loss is the same
    ``lam``-weighted sum of the two hard-label losses as against the soft label."""

    labels: torch.Tensor
    partner: torch.Tensor
    lam: float

    def to(self, device: torch.device | str) -> MixedTargets:
        return MixedTargets(self.labels.to(device), self.partner.to(device), self.lam)


EMPTY_EVAL = "evaluation data is empty; give a non-empty validation/test set"


@torch.no_grad()
def collect_predictions(
    task: Any,
    logits_of: Callable[[nn.Module, Any], torch.Tensor],
    model: nn.Module,
    loader: Iterable[Any],
    teacher: nn.Module | TeacherPredictions | None,
    device: torch.device | str,
    allow_empty: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Softmax probabilities ``(N, C)``, labels ``(N,)`` and, with a teacher, whether its top-1 agrees
    ``(N,)``, over ``loader`` with the models in eval mode (the model's mode is restored after). With
    :class:`TeacherPredictions` the teacher runs only on batches it has not seen. An empty ``loader``
    is an error unless ``allow_empty`` (a rank's empty slice): then ``N`` is 0 and agreement None."""
    cache = teacher if isinstance(teacher, TeacherPredictions) else None
    teacher = cache.teacher if cache is not None else teacher
    was_training = model.training
    model.eval()
    if teacher is not None:
        teacher.eval()
    probs, labels, agree, teacher_top1 = [], [], [], []
    try:
        for index, raw in enumerate(loader):
            batch = task.split(raw).to(device)
            logits = logits_of(model, batch.inputs).float()
            probs.append(logits.softmax(-1).cpu())
            labels.append(batch.targets.cpu())
            if teacher is not None:
                top1 = cache.known(index, labels[-1]) if cache is not None else None
                if top1 is None:
                    top1 = logits_of(teacher, batch.inputs).argmax(-1).cpu()
                teacher_top1.append(top1)
                agree.append(top1.eq(logits.argmax(-1).cpu()))
    finally:
        model.train(was_training)
    if not probs:
        if allow_empty:
            return torch.empty(0, 0), torch.empty(0, dtype=torch.long), None
        raise DistillError(EMPTY_EVAL)
    if cache is not None:
        cache.top1, cache.targets = teacher_top1, labels
    return torch.cat(probs), torch.cat(labels), (torch.cat(agree) if agree else None)


def label_metrics(p: torch.Tensor, y: torch.Tensor, agree: torch.Tensor | None) -> dict[str, float]:
    """Top-1 (%), NLL (nats), ECE (%), sample count and agreement with the teacher (%, when known)."""
    metrics = {
        "top1": 100.0 * p.argmax(1).eq(y).float().mean().item(),
        "nll": F.nll_loss(p.clamp_min(1e-12).log(), y).item(),
        "ece": 100.0 * expected_calibration_error(p, y),
        "samples": float(len(y)),
    }
    if agree is not None:
        metrics["agreement"] = 100.0 * agree.float().mean().item()
    return metrics


def confusion_matrix(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Counts ``(C, C)`` (int64): row = true label, column = top-1 prediction, over probabilities ``p``
    ``(N, C)`` and labels ``y``; ``C`` grows to cover a label beyond the model's classes."""
    classes = max(p.shape[1], int(y.max()) + 1 if y.numel() else 0)
    pairs = y.long() * classes + p.argmax(1)
    return torch.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


def checked_label_smoothing(task: str, value: Any) -> float:
    """``value`` as a float in [0, 1], else a DistillError naming ``task``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and 0.0 <= value <= 1.0):
        raise DistillError(
            f"{task}: label_smoothing must be in [0, 1], got {value!r}; use e.g. 0.1 (0 turns it off)"
        )
    return float(value)


def logits_of(out: Any) -> torch.Tensor:
    """A model's class logits: its output tensor, ``out["logits"]`` (Hugging Face style) or ``out[0]``."""
    if isinstance(out, torch.Tensor):  # the common case, before the slower check against an ABC
        return out
    if isinstance(out, Mapping):
        return out["logits"]
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


class ClassLogitsTask(Task):
    """What the class-logit tasks share: cross-entropy on ``@logits`` with ``label_smoothing`` (a label
    out of the model's range names ``label_fix``), batch accuracy, and :meth:`evaluate`'s label metrics
    (:func:`label_metrics`) over :meth:`eval_logits`, with the task's :meth:`more_metrics` after top-1."""

    primary_metric = "top1"
    classifies = True  # @logits: one score per class of the data
    label_smoothing: float = 0.0
    label_fix: str = ""

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        targets = batch.targets
        if isinstance(targets, MixedTargets):
            logits, smooth, fix = outputs["logits"], self.label_smoothing, self.label_fix
            own = checked_cross_entropy(logits, targets.labels, smooth, fix)
            if targets.lam == 1.0:
                return own
            other = checked_cross_entropy(logits, targets.partner, smooth, fix)
            return targets.lam * own + (1.0 - targets.lam) * other
        return checked_cross_entropy(
            outputs["logits"], targets, self.label_smoothing, self.label_fix
        )

    def batch_metrics(
        self, outputs: dict[str, torch.Tensor], batch: Batch
    ) -> dict[str, torch.Tensor]:
        """``acc`` on hard labels (transfer rows, labelled ``UNLABELLED``, left out); on mixed batches
        ``mixed_acc``, the mixed label's mass on the predicted class (not an accuracy against hard
        labels: none exist for a blend)."""
        predicted = outputs["logits"].argmax(-1)
        targets = batch.targets
        if isinstance(targets, MixedTargets):
            own = predicted.eq(targets.labels).float()
            other = predicted.eq(targets.partner).float()
            return {"mixed_acc": (targets.lam * own + (1.0 - targets.lam) * other).mean()}
        if targets.ndim == 1:  # class ids: transfer rows (UNLABELLED) left out
            # a prediction is a class id >= 0, so it never equals UNLABELLED: those rows are no hits
            hits = predicted.eq(targets).sum(dtype=torch.float32)
            return {"acc": hits / targets.ne(UNLABELLED).sum(dtype=torch.float32).clamp_min(1.0)}
        return {"acc": predicted.eq(targets).float().mean()}

    def mix_targets(self, batch: Batch, partner: torch.Tensor, lam: float) -> Batch:
        """Targets become :class:`MixedTargets`; the ``labels`` extra is dropped (a loss that reads hard
        labels is refused with mixing when the recipe is built)."""
        labels = batch.targets
        extras = {k: v for k, v in batch.extras.items() if k != "labels"}
        return Batch(batch.inputs, MixedTargets(labels, labels[partner], float(lam)), extras)

    def eval_logits(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """The logits evaluation reads (the training outputs' ``logits`` unless a task skips extras)."""
        return self.forward(model, inputs)["logits"]

    def more_metrics(self, probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """The task's metrics besides :func:`label_metrics`, from probabilities ``(N, C)`` and labels."""
        return {}

    last_confusion: torch.Tensor | None = None  # set by each evaluate: its confusion_matrix

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[Any],
        teacher: nn.Module | TeacherPredictions | None = None,
        device: torch.device | str = "cpu",
    ) -> dict[str, float]:
        """Label metrics; the :func:`confusion_matrix` of the same predictions is kept in
        :attr:`last_confusion` (``distill eval`` draws it)."""
        return self.metrics_of(
            [self.predictions(model, loader, teacher, device, allow_empty=False)]
        )

    shards_evaluation = True

    @torch.no_grad()
    def predictions(
        self,
        model: nn.Module,
        loader: Iterable[Any],
        teacher: nn.Module | TeacherPredictions | None = None,
        device: torch.device | str = "cpu",
        allow_empty: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`evaluate`'s first half, one rank's share: :func:`collect_predictions` over ``loader``."""
        return collect_predictions(
            self, self.eval_logits, model, loader, teacher, device, allow_empty
        )

    def metrics_of(
        self, parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
    ) -> dict[str, float]:
        """:meth:`evaluate`'s second half: the metrics of the concatenated :meth:`predictions` (every
        rank's slice, in order), the same numbers as over the whole set in one process."""
        parts = [part for part in parts if len(part[1])]
        if not parts:
            raise DistillError(EMPTY_EVAL)
        p = torch.cat([part[0] for part in parts])
        y = torch.cat([part[1] for part in parts])
        agrees = [part[2] for part in parts]
        agree = None if any(a is None for a in agrees) else torch.cat(agrees)
        metrics = label_metrics(p, y, agree)
        self.last_confusion = confusion_matrix(p, y)
        return {"top1": metrics.pop("top1"), **self.more_metrics(p, y), **metrics}


@TASKS.register(
    "classification", description="class logits, cross-entropy; top-1/top-5/NLL/ECE/agreement"
)
class ClassificationTask(ClassLogitsTask):
    """Batches are ``(x, y[, index])`` tuples or dicts with ``image``/``label``/``index`` keys.

    Evaluation: top-1/top-5 accuracy (%), NLL (nats), ECE (%), and agreement with the teacher
    (% same argmax)."""

    name = "classification"
    label_fix = "set num_classes to match the data"

    def __init__(
        self, label_smoothing: float = 0.0, input_key: str = "image", label_key: str = "label"
    ) -> None:
        self.label_smoothing = checked_label_smoothing("classification", label_smoothing)
        self.input_key = input_key
        self.label_key = label_key

    def split(self, batch: Any) -> Batch:
        if isinstance(batch, Mapping):
            try:
                x, y = batch[self.input_key], batch[self.label_key]
            except KeyError as missing:
                raise DistillError(
                    f"classification batch has no key {missing}; batch keys are {sorted(batch)}. "
                    "Set the task's input_key/label_key"
                ) from None
            extras = {k: v for k, v in batch.items() if k not in (self.input_key, self.label_key)}
        elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
            x, y = batch[0], batch[1]
            extras = {"index": batch[2]} if len(batch) > 2 else {}
        else:
            raise DistillError(
                f"classification batches must be (inputs, labels[, index]) or a dict, got {type(batch).__name__}"
            )
        extras["labels"] = y
        return Batch(inputs=x, targets=y, extras=extras)

    def forward(self, model: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": logits_of(model(inputs))}

    def more_metrics(self, probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Top-5 accuracy (%) (top-C with fewer than 5 classes)."""
        k = min(5, probs.shape[1])
        topk = probs.topk(k, 1).indices.eq(labels[:, None]).any(1).float().mean().item()
        return {f"top{k}": 100.0 * topk}
