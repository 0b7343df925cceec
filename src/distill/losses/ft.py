"""Kim et al., "Paraphrasing Complex Network: Network Compression via Factor Transfer", NeurIPS 2018.

A *paraphraser* P (a convolutional autoencoder on the teacher feature, bottleneck of ``k * C_t``
channels) extracts teacher *factors*; a *translator* T (three conv layers on the student feature)
produces student factors of the same shape; the student matches the factors after each is flattened
and L2-normalised per sample:

    F_t = P_enc(t),  F_s = T(s)
    L_FT  = mean | F_s / ||F_s||_2 - F_t / ||F_t||_2 |^p          (p = 1)
    L_rec = mean ( P_dec(P_enc(t)) - t )^2                          (trains the paraphraser)
    L = L_FT + reconstruction_weight * L_rec

Matches the authors' code (``Jangho-Kim/Factor-Transfer-pytorch``: ``Models/FeatureProjection.py``
modules without BN, LeakyReLU(0.1), 3x3 convolutions, paraphrase rate ``k = 0.5``; ``utils.FT`` +
``nn.L1Loss`` for the factor loss). When the factor maps differ in size, the larger one is
average-pooled to the smaller (RepDistiller's rule).

**Single-stage variant (differs from the paper).** The paper first trains the paraphraser alone as an
autoencoder on the teacher feature (``train_Paraphraser.py``), freezes it, then trains student and
translator. Here everything trains in one run: the reconstruction loss is part of this loss and is the
*only* signal the paraphraser gets (its factors enter ``L_FT`` detached, so the student cannot drag the
teacher's factors towards its own), and the paraphraser starts from random weights, so the targets
move while it learns during the first epochs. The reconstruction is the paper's squared L2 (the
authors' code uses L1). Note that the term weight multiplies the reconstruction too: with weight ``w``
the paraphraser trains at ``w * reconstruction_weight`` times the learning rate, so pair weight 200
with ``reconstruction_weight`` about ``1/200``.

Paper defaults: ``rate = 0.5``, ``p = 1``; factor-loss weight 200 in RepDistiller's CIFAR-100 benchmark
(500 in the authors' CIFAR-10 script), with the cross-entropy and without a KD term.

Practical notes: tap the last feature stage before pooling on both sides (RepDistiller's ``feat[-2]``),
no projector (the translator is one). Paraphraser and translator live in the loss and are never exported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses.base import DistillLoss


def _conv(c_in: int, c_out: int, transposed: bool = False) -> list[nn.Module]:
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    return [conv(c_in, c_out, kernel_size=3, stride=1, padding=1), nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """Autoencoder on the teacher feature: ``C_t -> C_t -> k C_t -> k C_t`` and back (authors' layout)."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        c, f = channels, factor_channels
        self.encoder = nn.Sequential(*_conv(c, c), *_conv(c, f), *_conv(f, f))
        self.decoder = nn.Sequential(*_conv(f, f, True), *_conv(f, c, True), *_conv(c, c, True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(factor, reconstruction)``."""
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """Student feature to factor: ``C_s -> C_s -> k C_t -> k C_t`` (authors' layout)."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        c, f = channels, factor_channels
        self.encoder = nn.Sequential(*_conv(c, c), *_conv(c, f), *_conv(f, f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def factor_transfer_loss(
    student_factor: torch.Tensor, teacher_factor: torch.Tensor, p: int = 1
) -> torch.Tensor:
    """Mean ``|.|^p`` distance between per-sample L2-normalised factors ``(B, C, H, W)``."""
    s, t = student_factor.float(), teacher_factor.detach().float()
    size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
    if tuple(s.shape[2:]) != size:
        s = F.adaptive_avg_pool2d(s, size)
    if tuple(t.shape[2:]) != size:
        t = F.adaptive_avg_pool2d(t, size)
    s = F.normalize(s.flatten(1), dim=1)
    t = F.normalize(t.flatten(1), dim=1)
    return (s - t).abs().pow(p).mean()


@LOSSES.register(
    "ft",
    paper="Kim et al., Paraphrasing Complex Network: Network Compression via Factor Transfer",
    year=2018,
    kind="feature",
    consumes="features (last stage), through a paraphraser and a translator",
    inputs="maps",
    identity=None,
    taps="the last feature stage before pooling on both sides; no projector",
    weight="200 (RepDistiller, CIFAR-100) with reconstruction_weight ~ 1/weight, without a KD term",
)
class FTLoss(DistillLoss):
    """Factor transfer on feature maps ``(B, C, H, W)``; paraphraser and translator built from shapes."""

    needs_same_shape = False  # the translator maps the student to the factor shape

    def __init__(self, rate: float = 0.5, p: int = 1, reconstruction_weight: float = 1.0) -> None:
        super().__init__()
        if not 0 < rate <= 1:
            raise ValueError(f"ft: rate must be in (0, 1], got {rate}; the paper uses 0.5")
        if p not in (1, 2):
            raise ValueError(f"ft: p must be 1 or 2, got {p!r}; the paper uses 1")
        if not reconstruction_weight >= 0:
            raise ValueError(
                f"ft: reconstruction_weight must be >= 0, got {reconstruction_weight}; "
                "use about 1/weight of the term (0 freezes the paraphraser at its random start)"
            )
        self.rate = float(rate)
        self.p = int(p)
        self.reconstruction_weight = float(reconstruction_weight)
        self.paraphraser: Paraphraser | None = None
        self.translator: Translator | None = None

    def build(self, student: torch.Tensor, teacher: torch.Tensor, **context: object) -> None:
        for name, x in (("student", student), ("teacher", teacher)):
            if not isinstance(x, torch.Tensor) or x.ndim != 4:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise DistillError(
                    f"ft: the {name} tap must be a feature map (B, C, H, W), got {shape}"
                )
        factor_channels = max(1, round(teacher.shape[1] * self.rate))
        self.paraphraser = Paraphraser(teacher.shape[1], factor_channels)
        self.translator = Translator(student.shape[1], factor_channels)
        if not self.reconstruction_weight:  # nothing would train it: keep it out of the optimizer
            self.paraphraser.requires_grad_(False)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.paraphraser is None or self.translator is None:
            raise DistillError(
                "ft: call build(student, teacher) with example tensors first (Distiller.setup does)"
            )
        teacher = teacher.detach()
        teacher_factor = self.paraphraser.encoder(teacher)
        loss = factor_transfer_loss(self.translator(student), teacher_factor.detach(), self.p)
        if self.reconstruction_weight:
            reconstruction = self.paraphraser.decoder(teacher_factor)
            rec = F.mse_loss(reconstruction.float(), teacher.float())
            loss = loss + self.reconstruction_weight * rec
        return loss

    def extra_repr(self) -> str:
        return f"rate={self.rate}, p={self.p}, reconstruction_weight={self.reconstruction_weight}"
