"""``data:``: the dataset, its subsets and validation split, batch augmentation, a transfer set of
unlabelled inputs, and the loader's worker settings."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from distill.config.schema.base import Strict, _lookup
from distill.registry import check_kwargs


class AugmentSpec(Strict):
    crop_padding: int = Field(
        0, ge=0, description="random crop after zero padding by this many pixels"
    )
    flip: bool = Field(False, description="random horizontal flip")
    token_mask: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="text: replace each token with the mask token with this probability (teacher and "
        "student read the same masked batch)",
    )
    resized_crop: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="random resized crop: the smallest crop area as a fraction of the image (e.g. 0.35; "
        "aspect 3/4 to 4/3, resized back); 0 = off",
    )
    randaugment: int = Field(
        0,
        ge=0,
        le=4,
        description="RandAugment-style ops per sample (geometric and photometric); 0 = off",
    )
    randaugment_magnitude: float = Field(
        9.0, ge=0.0, le=10.0, description="RandAugment magnitude M in [0, 10] for every op"
    )
    mixup: float = Field(
        0.0, ge=0.0, le=10.0, description="mixup Beta alpha (e.g. 0.2-1.0); mixed targets; 0 = off"
    )
    cutmix: float = Field(
        0.0, ge=0.0, le=10.0, description="cutmix Beta alpha (e.g. 1.0); mixed targets; 0 = off"
    )
    mix_prob: float = Field(
        1.0, ge=0.0, le=1.0, description="share of batches mixed when mixup or cutmix is on"
    )

    @property
    def views(self) -> bool:
        """Per-sample ops that need :class:`~distill.data.views.ViewAugment`."""
        return bool(self.resized_crop or self.randaugment)

    @property
    def mixes(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mix_prob > 0


class TransferDataSpec(Strict):
    """An extra dataset whose inputs join the transfer set (its labels are never read)."""

    name: str = Field(description="registry name (`distill list datasets`) or MODULE:FUNCTION")
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    subset: int | None = Field(None, gt=0, description="use only this many of its samples")

    @model_validator(mode="after")
    def _check(self) -> TransferDataSpec:
        factory = _lookup("dataset", self.name)
        check_kwargs(factory, self.options, what=f"dataset {self.name!r}", skip=("split", "root"))
        return self


class TransferSpec(Strict):
    """A transfer set (Hinton et al. 2015): distillation terms read every row, the task loss only the
    labelled ones (docs/recipes.md, "Transfer sets")."""

    labels_per_class: int | None = Field(
        None,
        gt=0,
        description="keep the labels of this many training samples per class; the other training "
        "samples join the transfer set without their labels",
    )
    dataset: TransferDataSpec | None = Field(
        None, description="an extra dataset (training split) whose inputs join the transfer set"
    )
    labelled_fraction: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="share of each training batch taken from the labelled set (cycled when it runs "
        "out); default: the sets' own proportion",
    )
    seed: int | None = Field(
        None,
        ge=0,
        description="which samples keep their labels (labels_per_class; default: train.seed, so they "
        "are the ones data.train_subset keeps with the same seed)",
    )

    @model_validator(mode="after")
    def _check(self) -> TransferSpec:
        if self.labels_per_class is None and self.dataset is None:
            raise ValueError(
                "data.transfer needs labels_per_class (the rest of the training set is used without "
                "labels) or dataset (extra unlabelled data), or both"
            )
        return self


class DataSpec(Strict):
    name: str = Field(
        "fashion_mnist",
        description="registry name (`distill list datasets`) or MODULE:FUNCTION, a factory "
        "f(split, root, **options) in a module listed under plugins",
    )
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    train_subset: int | None = Field(None, gt=0, description="use only this many training samples")
    test_subset: int | None = Field(
        None, gt=0, description="evaluate on only this many test samples"
    )
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    validation: int | None = Field(
        None,
        gt=0,
        description="evaluate on this many samples carved from the training set (class-balanced, the "
        "same ones every run) instead of the test split, which is then never read (distill tune)",
    )
    transfer: TransferSpec | None = Field(
        None,
        description="a transfer set: data for the distillation terms whose labels are not used",
    )
    num_workers: int = Field(
        0,
        ge=0,
        description="worker processes decoding items for datasets read per item (image_folder with "
        "lazy: true, hf_dataset images); in-memory datasets ignore it. The batch order "
        "does not depend on it, so a run resumes exactly with any value",
    )
    pin_memory: bool | None = Field(
        None,
        description="page-locked batches for faster GPU copies; default: when CUDA is available",
    )
    persistent_workers: bool = Field(
        False, description="keep the workers alive between passes (needs num_workers > 0)"
    )
    prefetch_factor: int | None = Field(
        None, gt=0, description="batches each worker loads ahead (needs num_workers > 0)"
    )

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        for key in ("persistent_workers", "prefetch_factor"):
            if getattr(self, key) and self.num_workers == 0:
                raise ValueError(
                    f"data.{key}={getattr(self, key)!r} needs worker processes; set data.num_workers "
                    f"(e.g. 4) or remove data.{key}"
                )
        factory = _lookup("dataset", self.name)
        check_kwargs(factory, self.options, what=f"dataset {self.name!r}", skip=("split", "root"))
        return self
