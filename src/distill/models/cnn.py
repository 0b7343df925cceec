"""A plain VGG-style CNN and its size presets (``cnn``, ``cnn_small``, ``cnn_large``).

Layout (tap names for feature distillation): ``features.0`` ... ``features.{S-1}`` are the
stages (stage ``i`` outputs ``[N, channels[i], H / 2**i, W / 2**i]``), ``pool`` gives
``[N, channels[-1]]`` and ``classifier`` the logits ``[N, num_classes]``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from distill.models import MODELS, ModelFactory, check_dropout, check_option, is_positive_int


def _stage(c_in: int, c_out: int, convs: int, batchnorm: bool, downsample: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers.append(nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
    if downsample:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class CNN(nn.Module):
    """Stages of ``convs_per_stage`` x [conv3x3, (BN), ReLU] with 2x2 max-pooling between stages."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        channels: Sequence[int],
        convs_per_stage: int,
        hidden: int,
        dropout: float,
        batchnorm: bool,
    ) -> None:
        super().__init__()
        widths = [in_channels, *channels]
        last = len(channels) - 1
        self.features = nn.Sequential(
            *(
                _stage(widths[i], widths[i + 1], convs_per_stage, batchnorm, downsample=i < last)
                for i in range(len(channels))
            )
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if hidden > 0:
            self.classifier = nn.Sequential(
                nn.Linear(channels[-1], hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )
        else:
            self.classifier = nn.Sequential(
                nn.Dropout(dropout), nn.Linear(channels[-1], num_classes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> logits ``[N, num_classes]``."""
        return self.classifier(self.pool(self.features(x)))


@MODELS.register("cnn", family="cnn", description="plain VGG-style CNN, configurable widths/depth")
def cnn(
    num_classes: int = 10,
    in_channels: int = 1,
    channels: Sequence[int] = (32, 64, 128),
    convs_per_stage: int = 1,
    hidden: int = 0,
    dropout: float = 0.0,
    batchnorm: bool = True,
) -> CNN:
    """Plain CNN; ``channels`` gives one stage per entry, ``hidden > 0`` adds an MLP head layer."""
    ok = isinstance(channels, Sequence) and len(channels) > 0
    ok = ok and all(is_positive_int(c) for c in channels)
    check_option(
        ok, "cnn", "channels", channels, "a non-empty list of positive ints, e.g. [32, 64, 128]"
    )
    check_option(
        is_positive_int(convs_per_stage), "cnn", "convs_per_stage", convs_per_stage, "an int >= 1"
    )
    hidden_ok = isinstance(hidden, int) and not isinstance(hidden, bool) and hidden >= 0
    check_option(hidden_ok, "cnn", "hidden", hidden, "an int >= 0 (0 = linear head)")
    check_dropout("cnn", dropout)
    return CNN(
        num_classes,
        in_channels,
        tuple(channels),
        convs_per_stage,
        hidden,
        float(dropout),
        bool(batchnorm),
    )


def _preset(name: str, base: ModelFactory, description: str, **defaults: Any) -> ModelFactory:
    """Register ``base`` under ``name`` with other defaults; its signature shows the new defaults."""

    def factory(num_classes: int = 10, in_channels: int = 1, **options: Any) -> nn.Module:
        return base(num_classes=num_classes, in_channels=in_channels, **{**defaults, **options})

    sig = inspect.signature(base)
    params = [p.replace(default=defaults.get(p.name, p.default)) for p in sig.parameters.values()]
    factory.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"``{base.__name__}`` preset: {description}."
    MODELS.add(name, factory, family=MODELS.meta(base.__name__)["family"], description=description)
    return factory


cnn_small = _preset("cnn_small", cnn, "small CNN, channels 8/16/32", channels=(8, 16, 32))
cnn_large = _preset(
    "cnn_large", cnn, "large CNN, channels 64/128/256, 2 convs per stage",
    channels=(64, 128, 256), convs_per_stage=2,
)  # fmt: skip
