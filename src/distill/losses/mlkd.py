"""Jin et al., "Multi-Level Logit Distillation" (MLKD), CVPR 2023.

MLKD aligns teacher and student predictions at three levels, each at several temperatures ("prediction
augmentation"), with ``P = softmax(Z / T)`` ``(B, C)``:

    instance  L_ins = T^2 * KL( P_t || P_s )                    per sample, averaged over the batch
    batch     L_bat = || P_s P_s^T - P_t P_t^T ||_F^2 / B       (B, B) sample-similarity Gram matrices
    class     L_cls = || P_s^T P_s - P_t^T P_t ||_F^2 / C       (C, C) class-correlation matrices
    L = sum_{T in temperatures} ( w_ins * L_ins + w_bat * L_bat + w_cls * L_cls )

Defaults from the authors' code (github.com/Jin-Ying/Multi-Level-Logit-Distillation,
``mdistiller/distillers/KD_ours.py``): temperatures {2, 3, 4, 5, 6}, all level weights 1, the whole
loss weighted 0.9 next to cross-entropy with weight 0.1 (mdistiller's KD weights) on CIFAR-100.

What this loss covers, and what it leaves out: it is the alignment loss on the logits it is given.
The paper's full pipeline also feeds each batch twice, weakly and strongly augmented,
and distils on both views; that augmentation pair is part of the data pipeline, not of this loss. In the
authors' code the weak view's terms are multiplied by the fraction of samples (classes, for the class
term) whose teacher confidence is at or below the batch median (a mask applied after the batch mean,
so in effect a factor of about 0.5), the batch and class terms use only the weak view, and two of the
strong view's instance terms (T = 2, 6) use the weak logits. None of this fits a single pair of logits;
here every level sees the same logits, unmasked.

The batch term depends on which samples share a batch, and the class and batch terms grow when a batch
is repeated (they are sums over the batch), so the value is not batch-size invariant. **Scale with batch
size and class count**: as written in the paper and the authors' code, the batch term grows like ``B`` and
the class term like ``B^2 / C`` (entries of ``P^T P`` are sums over the batch). The authors' setting is
``B = 64``, ``C = 100``; at ``B = 256``, ``C = 10`` the class term is about 160 times larger and swamps the
cross-entropy (on the Fashion-MNIST pair the student collapses to a constant prediction). Rescale with
``batch_weight = 64 / B`` and ``class_weight = (64^2 / 100) / (B^2 / C)`` to keep the authors' balance. Taps ``@logits``.
``standardize=True`` z-scores the logits of the instance term (logit standardization, Sun et al. CVPR
2024, whose code applies it to MLKD's instance term only; their ``--base-temp 2`` replaces the 4 in the
temperature list, giving {2, 3, 5, 2, 6}, and the loss weight becomes 9).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from distill.losses import LOSSES
from distill.losses._common import flat_logits
from distill.losses._standardize import standardize as zscore
from distill.losses.base import DistillLoss


def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in float32 even under autocast (which would run the matmul in bf16/fp16)."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        return a.float() @ b.float()


def mlkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperatures: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0),
    instance_weight: float = 1.0,
    batch_weight: float = 1.0,
    class_weight: float = 1.0,
    standardize: bool = False,
) -> torch.Tensor:
    """Instance-, batch- and class-level alignment summed over ``temperatures``; logits ``(B, C)``."""
    s, t = flat_logits(student_logits, teacher_logits)
    s_ins, t_ins = (zscore(s), zscore(t)) if standardize else (s, t)
    batch = s.shape[0]
    total = s.new_zeros(())
    for temperature in temperatures:
        if instance_weight:
            kl = F.kl_div(
                F.log_softmax(s_ins / temperature, dim=1),
                F.log_softmax(t_ins / temperature, dim=1),
                reduction="batchmean",
                log_target=True,
            )
            total = total + instance_weight * temperature**2 * kl
        p_s, p_t = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
        if batch_weight:
            diff = _gram(p_s, p_s.t()) - _gram(p_t, p_t.t())
            total = total + batch_weight * diff.pow(2).sum() / batch
        if class_weight:
            diff = _gram(p_s.t(), p_s) - _gram(p_t.t(), p_t)
            total = total + class_weight * diff.pow(2).sum() / s.shape[-1]
    return total


@LOSSES.register(
    "mlkd",
    paper="Jin et al., Multi-Level Logit Distillation",
    year=2023,
    kind="logit",
    consumes="logits (per sample, across the batch and across classes, at 5 temperatures)",
    inputs="logits",
    identity="zero",
    batch_invariant=False,
    taps="@logits",
    weight="0.9 next to a task weight of 0.1 (CIFAR-100, batch 64); the Fashion-MNIST pair: 0.2 next to 1, level weights rescaled",
)
class MLKDLoss(DistillLoss):
    """Multi-level (instance, batch, class) logit alignment at several temperatures; logits ``(B, C)``."""

    def __init__(
        self,
        temperatures: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0),
        instance_weight: float = 1.0,
        batch_weight: float = 1.0,
        class_weight: float = 1.0,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        temps = [float(x) for x in temperatures]
        if not temps or any(x <= 0 for x in temps):
            raise ValueError(
                f"mlkd: temperatures must be a non-empty list of values > 0, got {list(temperatures)}; "
                "the paper uses [2, 3, 4, 5, 6]"
            )
        weights = {"instance": instance_weight, "batch": batch_weight, "class": class_weight}
        bad = {k: w for k, w in weights.items() if w < 0}
        if bad:
            raise ValueError(f"mlkd: level weights must be >= 0, got {bad}; the paper uses 1")
        self.temperatures = tuple(temps)
        self.instance_weight = float(instance_weight)
        self.batch_weight = float(batch_weight)
        self.class_weight = float(class_weight)
        self.standardize = bool(standardize)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return mlkd_loss(
            student,
            teacher,
            self.temperatures,
            self.instance_weight,
            self.batch_weight,
            self.class_weight,
            self.standardize,
        )

    def extra_repr(self) -> str:
        return (
            f"temperatures={list(self.temperatures)}, weights=(instance={self.instance_weight}, "
            f"batch={self.batch_weight}, class={self.class_weight}), standardize={self.standardize}"
        )
