"""Ground-truth boxes on a feature map: the masks the box-aware detection losses (``fgd``, ``fgfi``) use.

Boxes come from ``Batch.extras`` as the detection task hands them over: ``boxes`` ``(N, 4)`` normalised
``x1, y1, x2, y2`` in [0, 1] relative to the network input, and ``box_index`` ``(N,)``, the image of the
batch each box belongs to. ``N`` may be 0 (a background-only batch). A map of ``H x W`` cells covers the
whole input, so a box maps to cells by scaling with ``W`` and ``H``, whatever the level's stride.
"""

from __future__ import annotations

import torch

from distill.errors import DistillError


def check_boxes(
    boxes: torch.Tensor, box_index: torch.Tensor, batch: int, who: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the box extras of a batch of ``batch`` images; return them as float32 and long."""
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise DistillError(
            f"{who}: boxes must be (N, 4) normalised x1, y1, x2, y2, got shape {tuple(boxes.shape)}; "
            "the detection task puts them in Batch.extras['boxes']"
        )
    if box_index.shape != boxes.shape[:1]:
        raise DistillError(
            f"{who}: box_index must be (N,) = ({boxes.shape[0]},), one image index per box, got shape "
            f"{tuple(box_index.shape)}"
        )
    box_index = box_index.long()
    if boxes.shape[0] and (int(box_index.min()) < 0 or int(box_index.max()) >= batch):
        raise DistillError(
            f"{who}: box_index holds {int(box_index.min())}..{int(box_index.max())} but the batch has "
            f"{batch} images; box_index must count images of this batch (0..{batch - 1})"
        )
    return boxes.detach().float(), box_index


def _per_image_max(
    per_box: torch.Tensor, box_index: torch.Tensor, batch: int, height: int, width: int
) -> torch.Tensor:
    """``(N, H, W)`` per-box values -> ``(B, H, W)``, the maximum over each image's boxes (0 where none)."""
    out = per_box.new_zeros(batch, height * width)
    if per_box.shape[0]:
        values = per_box.reshape(per_box.shape[0], -1)
        out.scatter_reduce_(0, box_index[:, None].expand_as(values), values, "amax")
    return out.view(batch, height, width)


def fgd_masks(
    boxes: torch.Tensor, box_index: torch.Tensor, batch: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """FGD's foreground and background masks, ``(B, H, W)`` each (yzd-v/FGD ``FeatureLoss.forward``).

    A box covers the cells ``floor(y1 H) .. ceil(y2 H)`` by ``floor(x1 W) .. ceil(x2 W)`` (both ends
    included, as the official slicing); each of its cells gets ``1 / (its cell count)``, the larger value
    where boxes overlap. The background mask is 1 on cells no box covers, divided by their number.
    """
    device = boxes.device
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    wmin, wmax = torch.floor(x1 * width), torch.ceil(x2 * width)
    hmin, hmax = torch.floor(y1 * height), torch.ceil(y2 * height)
    area = 1.0 / ((hmax + 1 - hmin) * (wmax + 1 - wmin))  # (N,)
    rows = torch.arange(height, device=device, dtype=torch.float32)
    cols = torch.arange(width, device=device, dtype=torch.float32)
    in_rows = (rows >= hmin[:, None]) & (rows <= hmax[:, None])  # (N, H)
    in_cols = (cols >= wmin[:, None]) & (cols <= wmax[:, None])  # (N, W)
    per_box = (in_rows[:, :, None] & in_cols[:, None, :]).float() * area[:, None, None]
    foreground = _per_image_max(per_box, box_index, batch, height, width)
    background = (foreground == 0).float()
    background = background / background.sum(dim=(1, 2), keepdim=True).clamp(min=1)
    return foreground, background


def centre_masks(
    boxes: torch.Tensor, box_index: torch.Tensor, batch: int, height: int, width: int
) -> torch.Tensor:
    """``(B, H, W)`` 0/1: cells whose centre lies inside a box of the image (the anchor points YOLOv8's
    assigner considers for it), plus the cell holding each box's centre, so a box smaller than a cell
    still marks one cell."""
    device = boxes.device
    cx = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    cy = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    in_cols = (cx >= boxes[:, 0:1]) & (cx <= boxes[:, 2:3])  # (N, W)
    in_rows = (cy >= boxes[:, 1:2]) & (cy <= boxes[:, 3:4])  # (N, H)
    per_box = (in_rows[:, :, None] & in_cols[:, None, :]).float()
    centre_col = ((boxes[:, 0] + boxes[:, 2]) / 2 * width).floor().long().clamp(0, width - 1)
    centre_row = ((boxes[:, 1] + boxes[:, 3]) / 2 * height).floor().long().clamp(0, height - 1)
    per_box[torch.arange(boxes.shape[0], device=device), centre_row, centre_col] = 1.0
    return _per_image_max(per_box, box_index, batch, height, width)
