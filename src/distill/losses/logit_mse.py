"""Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014.

The student regresses the teacher's logits (the inputs of the softmax) directly, with a squared error,
instead of matching temperature-softened probabilities:

    L = mean over samples and classes of (z_s - z_t)^2                        (reduction="mean")
    L = mean over samples of ||z_s - z_t||^2 = C * the above                  (reduction="batchmean")

Ba & Caruana's mimic objective is ``1/(2N) sum_n ||z_s - z_t||^2``, i.e. half of ``batchmean``; the
default ``mean`` is ``F.mse_loss``, as in the code of Kim et al., "Comparing Kullback-Leibler Divergence
and Mean Squared Error Loss in Knowledge Distillation", IJCAI 2021 (``mse_logit``), who found that this
plain logit regression, used *alone* (no cross-entropy), matches or beats KD on CIFAR-100 and ImageNet.
The two reductions differ only by the factor C (the number of classes): a weight.

Logit matching is the high-temperature limit of KD (Hinton et al. 2015, section 2.1): for per-sample
zero-mean logits, ``T^2 * KL`` tends to ``0.5 * L`` (``mean`` reduction) as T grows. Unlike KD it is
not invariant to a constant shift of the logits, so the student also copies the teacher's logit scale
and offset; there is no temperature to tune.

Practical notes: taps ``@logits``; identical logits give exactly 0. Ba & Caruana and Kim et al. train on
this loss alone (``task_weight: 0``); on the Fashion-MNIST pair at a short budget that lost 5 points, so its recipe
uses the regression next to cross-entropy. Next to
cross-entropy, Knowledge-Distillation-Zoo (AberHu, ``Logits``, the same ``F.mse_loss``) uses a weight
of 0.1 on CIFAR; the loss grows with the teacher's logit range, so check its scale on your teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import LOSSES
from distill.losses._common import flat_logits
from distill.losses.base import DistillLoss

REDUCTIONS = ("mean", "batchmean")


def logit_mse_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Squared error between logits ``(..., C)``; ``mean`` over all entries or ``batchmean`` (per sample)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit_mse: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ; both models must predict the same classes"
        )
    s, t = flat_logits(student_logits, teacher_logits)
    loss = F.mse_loss(s, t)
    return loss * s.shape[-1] if reduction == "batchmean" else loss


@LOSSES.register(
    "logit_mse",
    paper="Ba & Caruana, Do Deep Nets Really Need to be Deep?, NeurIPS",
    year=2014,
    kind="logit",
    consumes="logits",
    inputs="logits",
    identity="zero",
    taps="@logits",
    weight="1 alone in place of cross-entropy (Ba & Caruana / Kim et al. 2021); 0.1 next to cross-entropy (KD-Zoo, the Fashion-MNIST pair)",
)
class LogitMSELoss(DistillLoss):
    """Mean squared error between student and teacher logits ``(B, C)`` (or ``(B, T, C)``)."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"logit_mse: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return logit_mse_loss(student, teacher, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
