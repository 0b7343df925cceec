"""Yang et al., "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
Normalized Loss and Customized Soft Labels" (NKD), ICCV 2023.

KD's loss splits into a target-class part and a non-target part whose scale shrinks as the student's
target probability grows. NKD *normalizes* the non-target distributions (each sums to 1 over the
non-target classes) so that part keeps its weight, and keeps the target part as the teacher's target
probability used as a soft weight of the student's log-likelihood:

    L = - T_y * log S_y  -  gamma * lambda^2 * sum_{i != y} N(T^lambda)_i * log N(S^lambda)_i

with ``T = softmax(z_t)``, ``S = softmax(z_s)`` (temperature 1) for the target part and, for the
non-target part, ``N(.^lambda)`` the softmax at temperature ``lambda`` over the non-target logits only
(the normalized non-target distribution). Averaged over samples. The target part is a cross-entropy,
not a divergence: the loss is not 0 when student and teacher agree.

Defaults from the authors' code (github.com/yzd-v/cls_KD, ``mmcls/models/dis_losses/nkd.py``): temperature
(lambda) = 1, gamma = 1.5 (ImageNet, ResNet-34 -> ResNet-18); their CIFAR-100 config uses temperature 3,
gamma 3.5. NKD is added to the cross-entropy loss (weight 1). Needs labels (``extra_inputs``), taps
``@logits``. Deviation: one revision of the authors' code (``mmcls/distillation/losses/nkd.py``) builds
the non-target mask with ``scatter_(1, label, 1)`` on a tensor of ones, which keeps the target class in
the "non-target" softmax; this follows the corrected revision and the paper (target class removed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import LOSSES
from distill.losses._common import flat_logits, positive
from distill.losses.base import DistillLoss

_MASKED = -1e9  # a masked logit: exp() underflows to exactly 0 in float32


def nkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    gamma: float = 1.5,
) -> torch.Tensor:
    """NKD for logits ``(..., C)`` and labels ``(...)`` (or one-hot/soft labels ``(..., C)``)."""
    s, t = flat_logits(student_logits, teacher_logits)
    if labels.shape == student_logits.shape:  # one-hot or soft labels: the arg-max class
        labels = labels.argmax(dim=-1)
    target = labels.reshape(-1, 1).long()
    log_s_y = F.log_softmax(s, dim=1).gather(1, target)
    t_y = F.softmax(t, dim=1).gather(1, target)
    loss_target = -(t_y * log_s_y).mean()
    gt_mask = F.one_hot(target.squeeze(1), s.shape[-1]).bool()
    log_s_non = F.log_softmax(s.masked_fill(gt_mask, _MASKED) / temperature, dim=1)
    t_non = F.softmax(t.masked_fill(gt_mask, _MASKED) / temperature, dim=1)
    loss_non = -(t_non * log_s_non).sum(dim=1).mean()
    return loss_target + gamma * temperature**2 * loss_non


@LOSSES.register(
    "nkd",
    paper=(
        "Yang et al., From Knowledge Distillation to Self-Knowledge Distillation: "
        "A Unified Approach with Normalized Loss and Customized Soft Labels"
    ),
    year=2023,
    kind="logit",
    consumes="logits + labels",
    inputs="logits",
    identity=None,
    taps="@logits",
    weight="1 (gamma=1.5, T=1 on ImageNet; gamma=3.5, T=3 on CIFAR-100)",
)
class NKDLoss(DistillLoss):
    """Normalized KD on logits ``(B, C)``: soft-weighted target term + normalized non-target KD."""

    extra_inputs = ("labels",)

    def __init__(self, temperature: float = 1.0, gamma: float = 1.5) -> None:
        super().__init__()
        positive("nkd", "temperature", temperature, "the paper uses 1 (ImageNet) to 3")
        if gamma < 0:
            raise ValueError(f"nkd: gamma must be >= 0, got {gamma}; the paper uses 1.5")
        self.temperature = float(temperature)
        self.gamma = float(gamma)

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return nkd_loss(student, teacher, labels, self.temperature, self.gamma)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gamma={self.gamma}"
