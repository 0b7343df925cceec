"""Vectorised augmentation of whole batches (no per-sample Python loops).

All randomness is drawn on the CPU from the generator passed in, so results depend only on
its seed, whatever device the images live on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from distill.errors import DistillError, did_you_mean


class BatchAugment:
    """Random zero-padded crop and random horizontal flip (p=0.5), each sample independently.

    ``crop_padding``: pixels of zero padding on every side; the crop offset per sample is
    uniform in [0, 2*crop_padding] in both directions, so output size == input size.
    """

    def __init__(self, crop_padding: int = 0, flip: bool = False) -> None:
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise DistillError(
                f"crop_padding must be a non-negative integer, got {crop_padding!r}; use e.g. 4 or 0 to disable"
            )
        self.crop_padding = crop_padding
        self.flip = bool(flip)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | BatchAugment | None) -> BatchAugment:
        """Build from ``{"crop_padding": int, "flip": bool}``; None means no augmentation."""
        if config is None:
            return cls()
        if isinstance(config, BatchAugment):
            return config
        allowed = ("crop_padding", "flip")
        for key in config:
            if key not in allowed:
                raise DistillError(
                    f"unknown augmentation option {key!r}.{did_you_mean(str(key), allowed)} "
                    f"Accepted: {', '.join(allowed)}"
                )
        return cls(**dict(config))

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment images [B,C,H,W]; returns a new tensor of the same shape, dtype and device."""
        if images.ndim != 4:
            raise DistillError(
                f"BatchAugment expects images [B,C,H,W], got shape {tuple(images.shape)}; batch them first"
            )
        out = images
        if self.crop_padding > 0:
            out = self._crop(out, generator)
        if self.flip:
            mask = torch.rand(len(out), generator=generator) < 0.5
            mask = mask.to(out.device)[:, None, None, None]
            out = torch.where(mask, out.flip(-1), out)
        return out

    def _crop(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        b, _, h, w = images.shape
        pad = self.crop_padding
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(images.device)
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))  # [B,C,H+2p,W+2p]
        rows = dy[:, None] + torch.arange(h, device=images.device)  # [B,H]
        cols = dx[:, None] + torch.arange(w, device=images.device)  # [B,W]
        batch = torch.arange(b, device=images.device)[:, None, None]
        # advanced indexing on dims 0,2,3 puts [B,H,W] first and channels last
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()

    def __repr__(self) -> str:
        return f"BatchAugment(crop_padding={self.crop_padding}, flip={self.flip})"
