"""FGFI (Wang et al., CVPR 2019): the authors' masked imitation loss and the anchor-free imitation mask.

The reference transcribes twangnh/Distilling-Object-Detectors ``lib/model/faster_rcnn/faster_rcnn.py``
(the imitation part: ``mask > 0`` per image, ``norms = mask_batch.sum() * 2``,
``(pow(sup_feature - stu_feature_adap, 2) * mask_batch).sum() / norms``) for a given mask; the mask
itself is ours (cell centres inside a box, see ``distill.losses.fgfi``) and is tested on its own.
"""

from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.losses import build_loss
from distill.losses._boxes import centre_masks
from distill.losses.fgfi import fgfi_loss
from distill.losses.fitnet import fitnet_loss


def reference_imitation(mask_batch, stu_feature_adap, sup_feature, imitation_loss_weight=1.0):
    mask_list = []
    for mask in mask_batch:
        mask = (mask > 0).float().unsqueeze(0)
        mask_list.append(mask)
    mask_batch = torch.stack(mask_list, dim=0)
    norms = mask_batch.sum() * 2
    sup_loss = (torch.pow(sup_feature - stu_feature_adap, 2) * mask_batch).sum() / norms
    return sup_loss * imitation_loss_weight


def _case(seed=0, batch=3, channels=6, height=5, width=7):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, channels, height, width, generator=g)
    t = torch.randn(batch, channels, height, width, generator=g)
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.7], [0.6, 0.0, 0.95, 0.3], [0.3, 0.3, 0.9, 0.9]])
    return s, t, boxes, torch.tensor([0, 0, 1])  # image 2 has no boxes


def test_matches_the_authors_code_for_the_same_mask():
    s, t, boxes, box_index = _case()
    mask = centre_masks(boxes, box_index, 3, 5, 7)
    expected = reference_imitation(mask, s, t)
    torch.testing.assert_close(fgfi_loss(s, t, mask), expected)
    torch.testing.assert_close(build_loss("fgfi")(s, t, boxes, box_index), expected)


def test_mask_marks_cells_whose_centre_is_inside_a_box():
    # a 4 x 4 map: cell centres at 0.125, 0.375, 0.625, 0.875
    box = torch.tensor(
        [[0.3, 0.1, 0.7, 0.4]]
    )  # columns 1..2 (0.375, 0.625), rows 0..1 (0.125, 0.375)
    mask = centre_masks(box, torch.zeros(1, dtype=torch.long), 2, 4, 4)
    expected = torch.zeros(2, 4, 4)
    expected[0, 0:2, 1:3] = 1
    torch.testing.assert_close(mask, expected)


def test_a_box_smaller_than_a_cell_still_marks_its_centre_cell():
    tiny = torch.tensor([[0.51, 0.26, 0.53, 0.28]])  # inside cell (row 1, column 2) of a 4 x 4 map
    mask = centre_masks(tiny, torch.zeros(1, dtype=torch.long), 1, 4, 4)
    assert mask.sum() == 1 and mask[0, 1, 2] == 1


def test_only_near_object_locations_count():
    s, t, boxes, box_index = _case(1)
    mask = centre_masks(boxes, box_index, 3, 5, 7).bool()
    assert mask[:2].any() and not mask[2].any()
    noisy_t = torch.where(mask[:, None], t, 100 * torch.randn_like(t))  # garbage off the objects
    loss = build_loss("fgfi")
    s = s.requires_grad_()
    value = loss(s, noisy_t, boxes, box_index)
    torch.testing.assert_close(value, loss(s, t, boxes, box_index))
    value.backward()
    at = s.grad.abs().sum(dim=1)
    assert (at[~mask] == 0).all() and (at[mask] > 0).all()


def test_a_whole_image_box_is_the_plain_hint_loss_times_channels_over_two():
    s, t, _, _ = _case(2, batch=2)
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    value = build_loss("fgfi")(s, t, whole, torch.tensor([0, 1]))
    torch.testing.assert_close(value, fitnet_loss(s, t) * s.shape[1] / 2)


def test_no_boxes_gives_zero_with_a_finite_gradient():
    s, t, _, _ = _case(3)
    s = s.requires_grad_()
    value = build_loss("fgfi")(s, t, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    value.backward()
    assert value == 0 and torch.isfinite(s.grad).all() and not s.grad.any()


def test_errors():
    s, t, boxes, box_index = _case()
    loss = build_loss("fgfi")
    with pytest.raises(DistillError, match="projector"):
        loss(s[:, :3], t, boxes, box_index)
    with pytest.raises(DistillError, match="box_index must be"):
        loss(s, t, boxes, box_index[:2])
    with pytest.raises(DistillError, match="box_index holds"):
        loss(s, t, boxes, torch.tensor([0, 0, -1]))
