"""Liu et al., "Exploring Inter-Channel Correlation for Diversity-preserved Knowledge Distillation",
ICCV 2021 (ICKD).

The student keeps the teacher's *inter-channel correlation*: how similar each pair of channels of a
feature map is (homology) or how different (diversity). For one sample with a feature map flattened to
``F`` of shape ``(C, H*W)``, the correlation matrix is the channel Gram matrix with L2-normalised rows,

    G = rownorm(F F^T)                                                 (C, C)

The student's map first passes a trainable embedding, a 1x1 convolution + BatchNorm to the teacher's
channel count (``Embed``, created in ``build()``), and the loss is the squared Frobenius distance,
averaged over samples and divided by the number of channels:

    L = 1/(B C) sum_b || G_s(b) - G_t(b) ||_F^2

Spatial sizes may differ: only the ``(C, C)`` matrices are compared. Row normalisation makes ``G``
invariant to the scale of each sample's features, and the Gram matrix ignores where in the map a
pattern occurs (any permutation of the positions, applied to all channels, leaves it unchanged).

Defaults and settings are the authors' (official code ``Cifar100/distiller_zoo/ICKD.py`` and
``train_student.sh``): the last feature stage before pooling (RepDistiller's ``feat[-2]``), weight
beta = 2.5 next to cross-entropy with weight 1, without a KD term (``-a 0 -b 2.5``; the README also
reports the variant with KD, ``-a 1``). ``embed=False`` compares the maps as they are (equal channel
counts needed); then ``loss(x, x) = 0``.

Where this differs from the public code: their ImageNet version (``ChSimLoss`` in the torchdistill fork)
divides by ``C * B^2`` instead of ``C * B``, so its value depends on the batch size; we keep the CIFAR
normalisation (a per-sample mean). The embedding trains with the student and is never exported with it.

Practical notes: taps ``features.3`` for the zoo's ``cnn`` (the last stage, before pooling); no
projector (the loss embeds the student itself). When ``H*W`` is small next to ``C`` (late stages) the
same value is computed without the ``(B, C, C)`` matrices, from ``(B, HW, HW)`` products (exact up to
rounding); otherwise memory is ``B * C_t^2`` per term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.losses import LOSSES
from distill.losses.base import DistillLoss


class Embed(nn.Module):
    """1x1 convolution (no bias) + BatchNorm from ``C_s`` to ``C_t`` channels, as in the authors' code."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def channel_correlation(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, C, C)``: channel Gram matrices with L2-normalised rows."""
    f = features.flatten(2)
    return F.normalize(f @ f.transpose(1, 2), dim=2)


def _row_distances_direct(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """``sum_rows ||rownorm(G_s) - rownorm(G_t)||^2`` per sample, building the (C, C) matrices."""
    g_s = F.normalize(f_s @ f_s.transpose(1, 2), dim=2)
    g_t = F.normalize(f_t @ f_t.transpose(1, 2), dim=2)
    return (g_s - g_t).pow(2).sum((1, 2))


def _row_distances_low_rank(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """The same sums without the (C, C) matrices, cheaper when ``H*W`` is small next to ``C``.

    Row ``m`` of ``G = F F^T`` has squared norm ``f_m (F^T F) f_m^T`` and ``G_s[m] . G_t[m] =
    f_s,m (F_s^T F_t) f_t,m^T``, so ``||g_s/|g_s| - g_t/|g_t|||^2`` needs only (HW, HW) matrices. Norms
    are floored at 1e-12 as in ``F.normalize`` (an all-zero row stays zero).
    """
    fs_t, ft_t = f_s.transpose(1, 2), f_t.transpose(1, 2)
    norm2_s = ((f_s @ (fs_t @ f_s)) * f_s).sum(-1)  # (B, C): squared norms of the rows of G_s
    norm2_t = ((f_t @ (ft_t @ f_t)) * f_t).sum(-1)
    dot = ((f_s @ (fs_t @ f_t)) * f_t).sum(-1)  # (B, C): G_s[m] . G_t[m]
    floor = 1e-24  # (1e-12)^2
    n_s, n_t = norm2_s.clamp(min=floor).sqrt(), norm2_t.clamp(min=floor).sqrt()
    rows = norm2_s / n_s**2 + norm2_t / n_t**2 - 2 * dot / (n_s * n_t)
    return rows.clamp(min=0).sum(1)


def ickd_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """``sum_b ||G_s - G_t||_F^2 / (B C)`` for maps with equal batch and channel counts."""
    if student_features.shape[:2] != teacher_features.shape[:2]:
        raise ValueError(
            f"ickd: student features {tuple(student_features.shape)} and teacher features "
            f"{tuple(teacher_features.shape)} need the same batch size and channel count "
            "(keep embed=True to map the student's channels to the teacher's)"
        )
    batch, channels = teacher_features.shape[:2]
    with torch.autocast(student_features.device.type, enabled=False):
        f_s = student_features.float().flatten(2)
        f_t = teacher_features.detach().float().flatten(2)
        hw_s, hw_t = f_s.shape[2], f_t.shape[2]
        low_rank = hw_s * hw_t < channels * (hw_s + hw_t)  # fewer multiply-adds than the Grams
        rows = (_row_distances_low_rank if low_rank else _row_distances_direct)(f_s, f_t)
        return rows.sum() / (batch * channels)


@LOSSES.register(
    "ickd",
    paper="Liu et al., Exploring Inter-Channel Correlation for Diversity-preserved Knowledge "
    "Distillation, ICCV",
    year=2021,
    kind="feature",
    consumes="feature maps (student through a 1x1 conv + BN embedding), channel correlation matrices",
    inputs="maps",
    taps="the last feature stage before pooling, e.g. features.3 for the cnn zoo model",
    weight="2.5 next to cross-entropy 1, without KD (the authors' CIFAR-100 script)",
)
class ICKDLoss(DistillLoss):
    """Inter-channel correlation between a student map ``(B, C_s, H, W)`` and a teacher map
    ``(B, C_t, H', W')``."""

    # the student is embedded to C_t channels; only (C, C) matrices compared
    needs_same_shape = False

    def __init__(self, embed: bool = True) -> None:
        super().__init__()
        if not isinstance(embed, bool):
            raise ValueError(f"ickd: embed must be true or false, got {embed!r}")
        self.use_embed = embed
        self.embed: nn.Module | None = None if embed else nn.Identity()

    def build(self, student: torch.Tensor, teacher: torch.Tensor, **context: object) -> None:
        """Create the student's embedding ``C_s -> C_t`` (1x1 conv + BN) from example maps."""
        if student.ndim != 4 or teacher.ndim != 4:
            raise ValueError(
                f"ickd: needs feature maps (B, C, H, W), got student {tuple(student.shape)} and "
                f"teacher {tuple(teacher.shape)}; tap a convolutional stage"
            )
        if self.use_embed:
            self.embed = Embed(student.shape[1], teacher.shape[1])

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.embed is None:
            raise RuntimeError(
                "ickd: the embedding does not exist yet; call build(student, teacher) first "
                "(Distiller.setup does)"
            )
        with torch.autocast(student.device.type, enabled=False):
            embedded = self.embed(student.float())
        return ickd_loss(embedded, teacher)

    def extra_repr(self) -> str:
        return f"embed={self.use_embed}"
