"""Yang et al., "Masked Generative Distillation", ECCV 2022.

Instead of imitating the teacher feature directly, the student feature (aligned to the teacher's width
by a 1x1 conv when the widths differ) is randomly masked and a small generation block must rebuild the
*full* teacher feature from what is left:

    M ~ Bernoulli(1 - lambda)                 the random mask (0 = masked)
    G = conv3x3 - ReLU - conv3x3              C_t -> C_t
    L = (1/B) * sum_{b,c,h,w} ( G(align(s) * M) - t )^2

Matches the authors' code (``yzd-v/MGD``: ``cls/mmcls/distillation/losses/mgd.py`` for classification,
``det/.../mgd.py`` for detection): summed squared error divided by the batch size, the
``alpha_mgd`` factor left to the term weight. Two masks:

* ``mask="channel"`` (default, the authors' classification code): whole channels are masked,
  ``M`` of shape ``(B, C, 1, 1)``, ``lambda = 0.15``;
* ``mask="spatial"`` (the paper's "random pixels", used for detection and segmentation): ``M`` of shape
  ``(B, 1, H, W)``; the authors use ``lambda = 0.65`` for detection.

Paper defaults for classification: ``alpha_mgd = 7e-5`` (the weight) and ``lambda = 0.15`` on the last
feature stage, with the cross-entropy and without a KD term. Detection uses ``alpha = 2e-5``,
``lambda = 0.65`` with spatial masks.

Practical notes: the mask is drawn from torch's global RNG on the features' device, so a run is
reproducible when the trainer seeds it (distill's trainer reseeds every step, which keeps resume exact);
the loss is therefore random and not zero at identity. Tap the last feature stage on both sides (the
spatial sizes must match); no projector (the align conv is built by the loss). The summed reduction makes
the right weight depend on the map size (the paper's 7e-5 is for ResNet maps of 512 x 7 x 7).
"""

from __future__ import annotations

import torch
from torch import nn

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses.base import DistillLoss

MASKS = ("channel", "spatial")


def random_mask(
    shape: torch.Size, mask_ratio: float, mode: str, device: torch.device
) -> torch.Tensor:
    """A 0/1 float mask for features ``(B, C, H, W)``: ``(B, C, 1, 1)`` (channel) or ``(B, 1, H, W)``
    (spatial), 0 with probability ``mask_ratio``; drawn from torch's global RNG as the official code."""
    batch, channels, height, width = shape
    if mode == "channel":
        draw = torch.rand((batch, channels, 1, 1), device=device)
        return (draw >= mask_ratio).float()  # official: where(mat < lambda, 0, 1)
    draw = torch.rand((batch, 1, height, width), device=device)
    return (draw <= 1 - mask_ratio).float()  # official: where(mat > 1 - lambda, 0, 1)


def mgd_loss(generated: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Summed squared error between the generated and the teacher feature, divided by the batch size."""
    diff = generated.float() - teacher_features.detach().float()
    return diff.pow(2).sum() / generated.shape[0]


@LOSSES.register(
    "mgd",
    paper="Yang et al., Masked Generative Distillation",
    year=2022,
    kind="feature",
    consumes="features (last stage), masked and regenerated",
    inputs="maps",
    identity=None,
    batch_invariant=False,  # a new random mask is drawn for every call
    taps="the last feature stage on both sides (same H x W); no projector",
    weight="7e-5 on ImageNet ResNet maps (classification), 2e-5 for detection; no KD term",
)
class MGDLoss(DistillLoss):
    """Masked generative distillation on feature maps ``(B, C, H, W)`` with equal ``H x W``."""

    needs_same_shape = False  # the align conv maps C_s to C_t

    def __init__(self, mask_ratio: float = 0.15, mask: str = "channel") -> None:
        super().__init__()
        if not 0 <= mask_ratio < 1:
            raise ValueError(
                f"mgd: mask_ratio must be in [0, 1), got {mask_ratio}; "
                "the paper uses 0.15 (channel masks) and 0.65 (spatial masks)"
            )
        if mask not in MASKS:
            raise ValueError(f"mgd: mask must be one of {', '.join(MASKS)}, got {mask!r}")
        self.mask_ratio = float(mask_ratio)
        self.mask = mask
        self.align: nn.Module | None = None
        self.generation: nn.Module | None = None

    def build(self, student: torch.Tensor, teacher: torch.Tensor, **context: object) -> None:
        self._check(student, teacher)
        c_s, c_t = student.shape[1], teacher.shape[1]
        self.align = nn.Conv2d(c_s, c_t, kernel_size=1) if c_s != c_t else None
        self.generation = nn.Sequential(
            nn.Conv2d(c_t, c_t, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c_t, c_t, kernel_size=3, padding=1),
        )

    @staticmethod
    def _check(student: torch.Tensor, teacher: torch.Tensor) -> None:
        if student.ndim != 4 or teacher.ndim != 4 or student.shape[2:] != teacher.shape[2:]:
            raise DistillError(
                f"mgd: needs feature maps (B, C, H, W) with the same H x W, got student "
                f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}; tap stages of equal resolution"
            )

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.generation is None:
            raise DistillError(
                "mgd: call build(student, teacher) with example tensors first (Distiller.setup does)"
            )
        self._check(student, teacher)
        if self.align is not None:
            student = self.align(student)
        keep = random_mask(teacher.shape, self.mask_ratio, self.mask, student.device)
        generated = self.generation(student * keep.to(student.dtype))
        return mgd_loss(generated, teacher)

    def extra_repr(self) -> str:
        return f"mask_ratio={self.mask_ratio}, mask={self.mask!r}"
