"""Vectorised augmentation of whole batches (no per-sample Python loops).

All randomness is drawn on the CPU from the generator passed in, so results depend only on
its seed, whatever device the images live on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from distill.data.base import DistillDataset, TextData
from distill.data.views import BatchMix, ConsistentAugment, ViewAugment
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


class TokenMask:
    """Replace each real, non-special token with the mask token with probability ``p`` (text batches).

    Inputs are dicts ``{"input_ids": (B, T), "attention_mask": (B, T), ...}``; padding (mask 0) and the
    tokenizer's special tokens ([CLS], [SEP], ...) are never touched. The teacher reads the same masked
    batch as the student, so soft targets stay consistent with what the student sees: the masked copies
    widen the transfer set, as TinyBERT's data augmentation does (Jiao et al., 2020), without a second model.
    """

    def __init__(
        self, p: float, mask_id: int, special_ids: list[int] | tuple[int, ...] = ()
    ) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise DistillError(
                f"token_mask must be in [0, 1), got {p!r}; use e.g. 0.1 or 0 to disable"
            )
        self.p = float(p)
        self.mask_id = int(mask_id)
        self.special_ids = tuple(int(i) for i in special_ids)
        self._special = torch.tensor(self.special_ids, dtype=torch.int64)  # made once, not per step

    @property
    def enabled(self) -> bool:
        return self.p > 0

    def __call__(self, inputs: Mapping[str, Tensor], generator: torch.Generator | None = None):
        if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
            raise DistillError(
                "token_mask augments text batches (dicts with input_ids); remove it for this data"
            )
        ids = inputs["input_ids"]
        draw = torch.rand(ids.shape, generator=generator).to(ids.device) < self.p
        eligible = ~torch.isin(ids, self._special.to(ids.device))
        if "attention_mask" in inputs:
            eligible &= inputs["attention_mask"].bool()
        out = dict(inputs)
        out["input_ids"] = torch.where(draw & eligible, torch.full_like(ids, self.mask_id), ids)
        return out

    def __repr__(self) -> str:
        return f"TokenMask(p={self.p}, mask_id={self.mask_id})"


def build_augment(
    spec: Any, data: Any, where: str = "data.augment"
) -> BatchAugment | TokenMask | ConsistentAugment | None:
    """The training-batch augmentation ``spec`` (``crop_padding``, ``flip``, ``resized_crop``,
    ``randaugment``, ``mixup``, ``cutmix``, ``token_mask``) asks for.

    Image options need image data, ``token_mask`` needs text data with a tokenizer that has a mask token;
    asking for the other kind is an error naming the option. Crop and flip alone keep
    :class:`BatchAugment`; resized crops or RandAugment give :class:`ViewAugment`, and mixup/cutmix a
    :class:`ConsistentAugment` with a :class:`BatchMix`. None when nothing is switched on.
    """
    text = isinstance(data, TextData)
    name = data.name if isinstance(data, DistillDataset) else type(data).__name__
    new = [k for k in ("resized_crop", "randaugment", "mixup", "cutmix") if getattr(spec, k, 0)]
    if text and (spec.crop_padding or spec.flip or new):
        options = "/".join(new) if new else "crop_padding/flip"
        raise DistillError(
            f"{where}: {options} augment images but dataset {name!r} holds text; "
            "remove them (text has token_mask)"
        )
    if spec.token_mask:
        if not text:
            raise DistillError(
                f"{where}.token_mask={spec.token_mask} masks tokens but dataset {name!r} holds no text; "
                "remove it (images have crop_padding and flip)"
            )
        tokenizer = data.tokenizer
        mask_id = getattr(tokenizer, "mask_token_id", None)  # a transformers tokenizer's
        if mask_id is None:
            raise DistillError(
                f"{where}.token_mask: the student's tokenizer has no mask token; set token_mask: 0"
            )
        return TokenMask(spec.token_mask, mask_id, list(tokenizer.all_special_ids))
    size = getattr(data, "image_size", None)
    size = max(size) if isinstance(size, (tuple, list)) and size else size
    if isinstance(size, int) and 0 < size < spec.crop_padding:
        raise DistillError(
            f"{where}.crop_padding={spec.crop_padding} pads more than the images are wide ({size} "
            f"pixels; the padded batch would not fit in memory); use a smaller crop_padding, e.g. {max(1, size // 8)}"
        )
    return image_augment(spec)


def image_augment(spec: Any) -> BatchAugment | ConsistentAugment | None:
    """The image part of ``spec`` (an ``AugmentSpec``); None when it changes nothing."""
    views: BatchAugment | ViewAugment | None
    if getattr(spec, "resized_crop", 0) or getattr(spec, "randaugment", 0):
        views = view_augment(spec)
    else:
        views = BatchAugment(spec.crop_padding, spec.flip)
        views = views if views.enabled else None
    mix = BatchMix(
        getattr(spec, "mixup", 0.0), getattr(spec, "cutmix", 0.0), getattr(spec, "mix_prob", 1.0)
    )
    if not mix.enabled:
        return (
            views
            if views is None or isinstance(views, BatchAugment)
            else ConsistentAugment(views, None)
        )
    return ConsistentAugment(views, mix)


def view_augment(spec: Any) -> ViewAugment:
    """Every per-sample op of ``spec`` as one :class:`ViewAugment` (whose views can be stored and rebuilt)."""
    return ViewAugment(
        spec.resized_crop,
        spec.crop_padding,
        spec.flip,
        spec.randaugment,
        spec.randaugment_magnitude,
    )
