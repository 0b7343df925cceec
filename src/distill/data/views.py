"""Consistent augmentation for image classification: per-sample views and batch-level mixing.

:class:`ViewAugment` draws, per sample, a random resized crop, a zero-padded shift, a horizontal flip and
RandAugment-style ops (Cubuk et al. 2020: ``ops`` ops per sample, each at ``magnitude``) as a few numbers,
its *parameters*: one 2x3 affine matrix (every geometric op composed, applied by one ``grid_sample``)
and two photometric factors. ``draw`` and ``apply`` are separate, so a view is rebuilt exactly from its
stored parameters (the augmentation-aware teacher cache keeps them).

:class:`BatchMix` mixes whole batches: mixup (Zhang et al. 2018) or cutmix (Yun et al. 2019), one draw of
``lam`` and of the partner order per batch. The trainer applies both to the batch that teacher and student
read (Beyer et al. 2022, "a good teacher is patient and consistent"), with a generator seeded from the
step, so a resumed run draws the same views.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import DistillError

PARAMS = (
    8  # per view: affine theta (6, output -> input coordinates in [-1, 1]), brightness, contrast
)
# RandAugment's op list, restricted to ops that are range-agnostic on float images
OPS = (
    "identity",
    "rotate",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "brightness",
    "contrast",
)
MAX_MAGNITUDE = 10.0
_ROTATE_DEG, _SHEAR, _TRANSLATE, _COLOR = 30.0, 0.3, 0.3, 0.9  # at magnitude 10


class ViewAugment:
    """Per-sample views of a batch ``[B, C, H, W]`` (square images assumed for rotation and shear).

    ``resized_crop``: smallest crop area (fraction of the image, e.g. 0.35; 0 = off), aspect ratio in
    [3/4, 4/3], resized back to the input size; ``crop_padding``: a whole-pixel shift in
    ``[-crop_padding, crop_padding]`` with zero fill; ``flip``: horizontal, p = 0.5; ``ops``/``magnitude``:
    RandAugment's N and M (M in [0, 10]; each op's sign random). Pixels outside the image read 0.
    """

    def __init__(
        self,
        resized_crop: float = 0.0,
        crop_padding: int = 0,
        flip: bool = False,
        ops: int = 0,
        magnitude: float = 9.0,
    ) -> None:
        if not 0.0 <= resized_crop < 1.0:
            raise DistillError(
                f"resized_crop must be in [0, 1) (the smallest crop area), got {resized_crop!r}; use e.g. 0.35"
            )
        if not 0.0 <= magnitude <= MAX_MAGNITUDE:
            raise DistillError(
                f"randaugment magnitude must be in [0, 10], got {magnitude!r}; use e.g. 9"
            )
        self.resized_crop, self.crop_padding, self.flip = (
            float(resized_crop),
            int(crop_padding),
            bool(flip),
        )
        self.ops, self.magnitude = int(ops), float(magnitude)

    @property
    def enabled(self) -> bool:
        return bool(self.resized_crop or self.crop_padding or self.flip or self.ops)

    def settings(self) -> dict[str, float | int | bool]:
        """What decides the views (part of the teacher cache's key)."""
        return {
            "resized_crop": self.resized_crop,
            "crop_padding": self.crop_padding,
            "flip": self.flip,
            "ops": self.ops,
            "magnitude": self.magnitude,
        }

    def draw(
        self, n: int, size: tuple[int, int], generator: torch.Generator | None = None
    ) -> Tensor:
        """Parameters ``(n, PARAMS)`` float32 of ``n`` views of ``size = (H, W)`` images (CPU draws)."""
        h, w = size
        eye = torch.eye(3).repeat(n, 1, 1)  # (n, 3, 3), output -> input coordinates
        color = torch.ones(n, 2)
        affine = eye.clone()
        if self.resized_crop:
            affine = affine @ _crop_matrices(n, self.resized_crop, generator)
        if self.crop_padding:
            shift = torch.randint(
                -self.crop_padding, self.crop_padding + 1, (n, 2), generator=generator
            )
            m = eye.clone()
            m[:, 0, 2], m[:, 1, 2] = 2.0 * shift[:, 0] / w, 2.0 * shift[:, 1] / h
            affine = affine @ m
        if self.flip:
            m = eye.clone()
            m[:, 0, 0] = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
            affine = affine @ m
        for _ in range(self.ops):
            op = torch.randint(len(OPS), (n,), generator=generator)
            sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
            affine = affine @ _op_matrices(op, sign * self.magnitude / MAX_MAGNITUDE, eye)
            scale = 1.0 + sign * _COLOR * self.magnitude / MAX_MAGNITUDE
            for j, name in enumerate(("brightness", "contrast")):
                color[:, j] = torch.where(op == OPS.index(name), color[:, j] * scale, color[:, j])
        return torch.cat([affine[:, :2, :].reshape(n, 6), color], dim=1).float()

    @staticmethod
    def apply(images: Tensor, params: Tensor) -> Tensor:
        """The views of ``images`` ``[B, C, H, W]`` that ``params`` ``(B, PARAMS)`` describe (deterministic)."""
        if images.ndim != 4 or params.shape != (len(images), PARAMS):
            raise DistillError(
                f"views need images [B,C,H,W] and parameters [B,{PARAMS}], got {tuple(images.shape)} "
                f"and {tuple(params.shape)}"
            )
        params = params.to(images.device, torch.float32)
        theta = params[:, :6].reshape(-1, 2, 3)
        x = images.float()
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        brightness, contrast = params[:, 6, None, None, None], params[:, 7, None, None, None]
        x = x * brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + contrast * (x - mean)
        return x.to(images.dtype)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """New views of ``images`` ``[B, C, H, W]`` (same shape, dtype and device)."""
        if images.ndim != 4:
            raise DistillError(
                f"image augmentation expects images [B,C,H,W], got shape {tuple(images.shape)}"
            )
        return self.apply(images, self.draw(len(images), tuple(images.shape[-2:]), generator))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.settings().items())
        return f"ViewAugment({inner})"


def _crop_matrices(n: int, min_area: float, generator: torch.Generator | None) -> Tensor:
    """Random resized crops as output -> input affine maps: area in [min_area, 1], ratio in [3/4, 4/3]."""
    area = min_area + (1.0 - min_area) * torch.rand(n, generator=generator)
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(
        n, generator=generator
    )
    ratio = log_ratio.exp()
    cw, ch = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    cx = (1.0 - cw) * (2.0 * torch.rand(n, generator=generator) - 1.0)
    cy = (1.0 - ch) * (2.0 * torch.rand(n, generator=generator) - 1.0)
    m = torch.eye(3).repeat(n, 1, 1)
    m[:, 0, 0], m[:, 1, 1], m[:, 0, 2], m[:, 1, 2] = cw, ch, cx, cy
    return m


def _op_matrices(op: Tensor, strength: Tensor, eye: Tensor) -> Tensor:
    """The geometric part of one RandAugment layer: ``(n, 3, 3)``, identity for photometric ops."""
    m = eye.clone()
    angle = strength * math.radians(_ROTATE_DEG)
    rotate = op == OPS.index("rotate")
    m[:, 0, 0] = torch.where(rotate, angle.cos(), m[:, 0, 0])
    m[:, 0, 1] = torch.where(rotate, -angle.sin(), m[:, 0, 1])
    m[:, 1, 0] = torch.where(rotate, angle.sin(), m[:, 1, 0])
    m[:, 1, 1] = torch.where(rotate, angle.cos(), m[:, 1, 1])
    m[:, 0, 1] = torch.where(op == OPS.index("shear_x"), strength * _SHEAR, m[:, 0, 1])
    m[:, 1, 0] = torch.where(op == OPS.index("shear_y"), strength * _SHEAR, m[:, 1, 0])
    m[:, 0, 2] = torch.where(op == OPS.index("translate_x"), strength * 2 * _TRANSLATE, m[:, 0, 2])
    m[:, 1, 2] = torch.where(op == OPS.index("translate_y"), strength * 2 * _TRANSLATE, m[:, 1, 2])
    return m


class BatchMix:
    """Mixup (``mixup`` = Beta alpha) and/or cutmix (``cutmix`` = Beta alpha) of whole batches.

    With probability ``prob`` a batch is mixed (by mixup or cutmix, half each when both are on) with a
    random permutation of itself: ``x = lam * x + (1 - lam) * x[perm]`` or a box of area ``1 - lam``
    pasted from ``x[perm]`` (``lam`` then the exact kept area). Otherwise ``lam = 1``.
    """

    def __init__(self, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0) -> None:
        if mixup < 0 or cutmix < 0 or not 0.0 <= prob <= 1.0:
            raise DistillError(
                f"mixup/cutmix alphas must be >= 0 and mix_prob in [0, 1], got mixup={mixup!r}, "
                f"cutmix={cutmix!r}, mix_prob={prob!r}; use e.g. mixup: 0.2"
            )
        self.mixup, self.cutmix, self.prob = float(mixup), float(cutmix), float(prob)

    @property
    def enabled(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0

    def __call__(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, float]:
        """``(mixed images, perm (B,), lam)``: sample ``i`` holds ``lam`` of itself and ``1 - lam`` of ``perm[i]``."""
        b = len(images)
        perm = torch.randperm(b, generator=generator)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        if rng.random() >= self.prob or not self.enabled:
            return images, perm.to(images.device), 1.0
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or rng.random() < 0.5)
        lam = float(rng.beta(*(2 * [self.cutmix if use_cutmix else self.mixup])))
        perm = perm.to(images.device)
        if not use_cutmix:
            return lam * images + (1.0 - lam) * images[perm], perm, lam
        h, w = images.shape[-2:]
        cut_h, cut_w = int(h * math.sqrt(1.0 - lam)), int(w * math.sqrt(1.0 - lam))
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        mixed = images.clone()
        mixed[..., y0:y1, x0:x1] = images[perm][..., y0:y1, x0:x1]
        return mixed, perm, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)

    def __repr__(self) -> str:
        return f"BatchMix(mixup={self.mixup}, cutmix={self.cutmix}, prob={self.prob})"


class ConsistentAugment:
    """Per-sample ``views`` (crop/flip :class:`~distill.data.augment.BatchAugment` or
    :class:`ViewAugment`, optional) then batch ``mix`` (:class:`BatchMix`, optional). The trainer
    calls ``views`` on the inputs and ``mix`` on the result, then asks the task to mix the targets."""

    def __init__(self, views, mix: BatchMix | None) -> None:
        self.views, self.mix = views, mix

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The per-sample views only (the mix needs the targets: the trainer applies it)."""
        return self.views(images, generator) if self.views is not None else images

    def __repr__(self) -> str:
        return f"ConsistentAugment(views={self.views!r}, mix={self.mix!r})"
