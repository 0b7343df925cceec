"""A small MobileNetV2-style network for 28x28 / 32x32 images (``mobilenet_small``).

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018: each block
expands with a 1x1 conv, filters with a 3x3 depthwise conv and projects back with a linear 1x1
conv, with a residual when shapes match. This variant keeps a stride-1 stem and only downsamples
three times (28 -> 14 -> 7 -> 4, 32 -> 16 -> 8 -> 4), and uses fewer blocks than the ImageNet net.

Taps: ``features.0`` (stem), ``features.1`` ... ``features.{B}`` (inverted residual blocks),
``features.{B+1}`` (last 1x1 conv), ``pool`` ``[N, C]``, ``classifier``.
"""

from __future__ import annotations

import torch
from torch import nn

from distill.models import MODELS, check_dropout, check_option

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2.
SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 3, 2),
    (6, 96, 2, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1024


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor``, never dropping more than 10% (TF reference)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_relu(
    c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU6, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (if ``expansion > 1``) -> 3x3 depthwise -> linear 1x1 project, + skip if shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = [conv_bn_relu(c_in, hidden, kernel=1)] if expansion != 1 else []
        layers += [
            conv_bn_relu(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetSmall(nn.Module):
    """Stem, inverted residual blocks from :data:`SETTINGS`, 1x1 conv, global pool, linear head."""

    def __init__(
        self, num_classes: int, in_channels: int, width_mult: float, dropout: float
    ) -> None:
        super().__init__()
        c = make_divisible(STEM_CHANNELS * width_mult)
        layers: list[nn.Module] = [conv_bn_relu(in_channels, c)]
        for t, c_out, n, s in SETTINGS:
            c_out = make_divisible(c_out * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        last = make_divisible(LAST_CHANNELS * width_mult)
        layers.append(conv_bn_relu(c, last, kernel=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> logits ``[N, num_classes]``."""
        return self.classifier(self.pool(self.features(x)))


@MODELS.register(
    "mobilenet_small",
    family="mobilenet",
    description="small MobileNetV2-style net (Sandler et al. 2018)",
)
def mobilenet_small(
    num_classes: int = 10, in_channels: int = 1, width_mult: float = 0.5, dropout: float = 0.0
) -> MobileNetSmall:
    """MobileNetV2-style student; ``width_mult`` scales every layer's channels (multiples of 8)."""
    ok = (
        isinstance(width_mult, (int, float)) and not isinstance(width_mult, bool) and width_mult > 0
    )
    check_option(ok, "mobilenet_small", "width_mult", width_mult, "a number > 0, e.g. 0.5 or 1.0")
    check_dropout("mobilenet_small", dropout)
    return MobileNetSmall(num_classes, in_channels, float(width_mult), float(dropout))
