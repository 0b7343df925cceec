"""CIFAR-style ResNets, the standard teacher/student pairs of the KD literature.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (section 4.2): a 3x3 stem
and three stages of ``n`` BasicBlocks, depth ``6n + 2``. Widths and module names follow the
RepDistiller layout (Tian et al., "Contrastive Representation Distillation", ICLR 2020,
``models/resnet.py``; also mdistiller): ``resnetN`` uses filters 16/16/32/64 and the ``x4``
variants 32/64/128/256, so ``state_dict`` keys match their checkpoints.

Taps: ``conv1``/``bn1``/``relu`` (stem), ``layer1`` ``[N, f1, H, W]``, ``layer2``
``[N, f2, H/2, W/2]``, ``layer3`` ``[N, f3, H/4, W/4]``, ``avgpool`` ``[N, f3, 1, 1]``, ``fc``.
``AdaptiveAvgPool2d`` replaces RepDistiller's ``AvgPool2d(8)`` so 28x28 inputs work too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from distill.models import MODELS, ModelFactory


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images; ``num_filters`` = [stem, stage1, stage2, stage3] widths."""

    def __init__(
        self, depth: int, num_filters: Sequence[int], num_classes: int = 10, in_channels: int = 1
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CifarResNet depth must be 6n + 2 (8, 14, 20, ...), got {depth}")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(in_channels, num_filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(num_filters[1], n)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_filters[3] * BasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.inplanes, planes * BasicBlock.expansion, 1, stride=stride, bias=False
                ),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> logits ``[N, num_classes]``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_NARROW = (16, 16, 32, 64)  # stem + 3 stages, resnetN
_WIDE = (32, 64, 128, 256)  # resnetNx4


def _register(name: str, widths: tuple[int, ...]) -> Callable[[ModelFactory], ModelFactory]:
    description = f"CIFAR-style {name}, stage widths {'/'.join(map(str, widths[1:]))}"
    return MODELS.register(
        name, family="resnet_cifar", description=description, paper="He et al. 2016"
    )


@_register("resnet8", _NARROW)
def resnet8(num_classes: int = 10, in_channels: int = 1) -> CifarResNet:
    """ResNet-8 (1 block per stage), widths 16/32/64."""
    return CifarResNet(8, _NARROW, num_classes, in_channels)


@_register("resnet14", _NARROW)
def resnet14(num_classes: int = 10, in_channels: int = 1) -> CifarResNet:
    """ResNet-14 (2 blocks per stage), widths 16/32/64."""
    return CifarResNet(14, _NARROW, num_classes, in_channels)


@_register("resnet20", _NARROW)
def resnet20(num_classes: int = 10, in_channels: int = 1) -> CifarResNet:
    """ResNet-20 (3 blocks per stage), widths 16/32/64."""
    return CifarResNet(20, _NARROW, num_classes, in_channels)


@_register("resnet32", _NARROW)
def resnet32(num_classes: int = 10, in_channels: int = 1) -> CifarResNet:
    """ResNet-32 (5 blocks per stage), widths 16/32/64."""
    return CifarResNet(32, _NARROW, num_classes, in_channels)


@_register("resnet44", _NARROW)
def resnet44(num_classes: int = 10, in_channels: int = 1) -> CifarResNet:
    """ResNet-44 (7 blocks per stage), widths 16/32/64."""
    return CifarResNet(44, _NARROW, num_classes, in_channels)


@_register("resnet56", _NARROW)
def resnet56(num_classes: int = 10, in_channels: int = 1) -> CifarResNet:
    """ResNet-56 (9 blocks per stage), widths 16/32/64; a common KD teacher."""
    return CifarResNet(56, _NARROW, num_classes, in_channels)


@_register("resnet110", _NARROW)
def resnet110(num_classes: int = 10, in_channels: int = 1) -> CifarResNet:
    """ResNet-110 (18 blocks per stage), widths 16/32/64; a common KD teacher."""
    return CifarResNet(110, _NARROW, num_classes, in_channels)


@_register("resnet8x4", _WIDE)
def resnet8x4(num_classes: int = 10, in_channels: int = 1) -> CifarResNet:
    """ResNet-8x4, widths 64/128/256 (~1.2M params at 100 classes); the usual x4 student."""
    return CifarResNet(8, _WIDE, num_classes, in_channels)


@_register("resnet32x4", _WIDE)
def resnet32x4(num_classes: int = 10, in_channels: int = 1) -> CifarResNet:
    """ResNet-32x4, widths 64/128/256 (~7.4M params at 100 classes); the usual x4 teacher."""
    return CifarResNet(32, _WIDE, num_classes, in_channels)
