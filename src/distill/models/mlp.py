"""A fully connected baseline (``mlp``): flatten, hidden Linear/ReLU/Dropout blocks, linear head.

Unlike the conv nets it needs the input size up front (``image_size``); taps are ``layers.{3k+1}``
(ReLU of hidden block ``k``, ``[N, hidden[k]]``) and ``classifier``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distill.errors import DistillError
from distill.models import MODELS, check_dropout, check_option, is_positive_int


class MLP(nn.Module):
    """``[N, C, H, W]`` -> flatten ``[N, C*H*W]`` -> hidden blocks -> logits ``[N, num_classes]``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        hidden: Sequence[int],
        dropout: float,
    ) -> None:
        super().__init__()
        self.input_shape = (in_channels, *image_size)
        self.flatten = nn.Flatten()
        widths = [in_channels * image_size[0] * image_size[1], *hidden]
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            blocks += [nn.Linear(c_in, c_out), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        self.layers = nn.Sequential(*blocks)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            c, h, w = self.input_shape
            raise DistillError(
                f"mlp was built for inputs [N, {c}, {h}, {w}] but got {list(x.shape)}; "
                f"build it with image_size={list(x.shape[-2:])} and in_channels={x.shape[1]}"
            )
        return self.classifier(self.layers(self.flatten(x)))


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int] | None:
    if is_positive_int(image_size):
        return (image_size, image_size)  # type: ignore[return-value]
    if isinstance(image_size, Sequence) and len(image_size) == 2:
        if all(is_positive_int(s) for s in image_size):
            return (image_size[0], image_size[1])
    return None


@MODELS.register("mlp", family="mlp", description="fully connected baseline for small images")
def mlp(
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int | Sequence[int] = 28,
    hidden: int | Sequence[int] = (256,),
    dropout: float = 0.0,
) -> MLP:
    """MLP for ``image_size`` (int or ``(H, W)``) inputs; ``hidden=()`` is logistic regression."""
    size = _as_size(image_size)
    check_option(size is not None, "mlp", "image_size", image_size, "a positive int or [H, W]")
    widths = (hidden,) if isinstance(hidden, int) else hidden
    ok = isinstance(widths, Sequence) and all(is_positive_int(h) for h in widths)
    check_option(ok, "mlp", "hidden", hidden, "a list of positive ints, e.g. [256] or []")
    check_dropout("mlp", dropout)
    assert size is not None
    return MLP(num_classes, in_channels, size, tuple(widths), float(dropout))
