"""MGD (Yang et al., ECCV 2022) against the official code and its defining properties.

The references transcribe the authors' yzd-v/MGD losses: ``cls/mmcls/distillation/losses/mgd.py``
(``MGDLoss``: channel masks, classification) and ``det/mmdet/distillation/losses/mgd.py``
(``FeatureLoss``: spatial masks, detection), both with ``alpha_mgd`` applied to the summed loss / N.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from distill.errors import DistillError
from distill.losses import build_loss
from distill.losses.mgd import random_mask


class ReferenceMGD(nn.Module):
    def __init__(self, student_channels, teacher_channels, alpha_mgd, lambda_mgd, spatial):
        super().__init__()
        self.alpha_mgd, self.lambda_mgd, self.spatial = alpha_mgd, lambda_mgd, spatial
        if student_channels != teacher_channels:
            self.align = nn.Conv2d(
                student_channels, teacher_channels, kernel_size=1, stride=1, padding=0
            )
        else:
            self.align = None
        self.generation = nn.Sequential(
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=3, padding=1),
        )

    def forward(self, preds_S, preds_T):
        assert preds_S.shape[-2:] == preds_T.shape[-2:]
        if self.align is not None:
            preds_S = self.align(preds_S)
        return self.get_dis_loss(preds_S, preds_T) * self.alpha_mgd

    def get_dis_loss(self, preds_S, preds_T):
        loss_mse = nn.MSELoss(reduction="sum")
        N, C, H, W = preds_T.shape
        device = preds_S.device
        if self.spatial:  # det/.../mgd.py
            mat = torch.rand((N, 1, H, W)).to(device)
            mat = torch.where(mat > 1 - self.lambda_mgd, 0, 1).to(device)
        else:  # cls/.../mgd.py
            mat = torch.rand((N, C, 1, 1)).to(device)
            mat = torch.where(mat < self.lambda_mgd, 0, 1).to(device)
        masked_fea = torch.mul(preds_S, mat)
        new_fea = self.generation(masked_fea)
        return loss_mse(new_fea, preds_T) / N


def _pair(seed=0, c_s=6, c_t=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, c_s, 5, 5, generator=g), torch.randn(4, c_t, 5, 5, generator=g)


def _built(s, t, **options):
    torch.manual_seed(0)
    loss = build_loss("mgd", **options)
    loss.build(s, t)
    return loss


@pytest.mark.parametrize(
    "mask, ratio, alpha, channels",
    [
        ("channel", 0.15, 7e-5, (6, 10)),
        ("spatial", 0.65, 2e-5, (6, 10)),
        ("channel", 0.5, 1.0, (8, 8)),
    ],
)
def test_matches_the_authors_code(mask, ratio, alpha, channels):
    s, t = _pair(c_s=channels[0], c_t=channels[1])
    loss = _built(s, t, mask=mask, mask_ratio=ratio)
    ref = ReferenceMGD(*channels, alpha, ratio, spatial=mask == "spatial")
    assert (ref.align is None) == (loss.align is None)
    if ref.align is not None:
        ref.align.load_state_dict(loss.align.state_dict())
    ref.generation.load_state_dict(loss.generation.state_dict())
    torch.manual_seed(11)
    ours = alpha * loss(s, t)  # alpha_mgd is the term weight
    torch.manual_seed(11)
    torch.testing.assert_close(ours, ref(s, t), rtol=1e-5, atol=1e-8)


def test_defaults_are_the_classification_setting():
    loss = build_loss("mgd")
    assert (loss.mask, loss.mask_ratio) == ("channel", 0.15)


def test_mask_comes_from_the_global_rng():
    """Reseeding torch's RNG (as the trainer does every step) reproduces the loss; a new seed changes it."""
    s, t = _pair(1)
    loss = _built(s, t, mask="spatial", mask_ratio=0.5)
    values = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        values.append(loss(s, t))
    assert values[0] == values[1] and values[0] != values[2]


@pytest.mark.parametrize("mode, ratio", [("channel", 0.15), ("spatial", 0.65)])
def test_mask_drops_the_requested_fraction(mode, ratio):
    torch.manual_seed(0)
    keep = random_mask(torch.Size((64, 32, 16, 16)), ratio, mode, torch.device("cpu"))
    assert keep.shape == ((64, 32, 1, 1) if mode == "channel" else (64, 1, 16, 16))
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    assert abs((1 - keep.mean().item()) - ratio) < 0.02


def test_masked_student_locations_get_no_gradient():
    """The generator sees only unmasked pixels: the student's masked locations receive no gradient."""
    s, t = _pair(2)
    loss = _built(s, t, mask="spatial", mask_ratio=0.5)
    s.requires_grad_()
    torch.manual_seed(5)
    loss(s, t).backward()
    torch.manual_seed(5)
    keep = random_mask(t.shape, 0.5, "spatial", s.device)  # the same draw
    grad_at = s.grad.abs().sum(dim=1, keepdim=True)
    assert (grad_at[keep == 0] == 0).all() and (grad_at[keep == 1] > 0).all()


def test_without_masking_it_is_a_generated_feature_regression():
    s, t = _pair(3)
    loss = _built(s, t, mask_ratio=0.0)
    expected = (loss.generation(loss.align(s)) - t).pow(2).sum() / s.shape[0]
    torch.testing.assert_close(loss(s, t), expected)


def test_errors():
    s, t = _pair()
    with pytest.raises(DistillError, match="build"):
        build_loss("mgd")(s, t)
    with pytest.raises(DistillError, match="same H x W"):
        build_loss("mgd").build(s, t[:, :, :3, :3])
    for bad in ({"mask_ratio": 1.0}, {"mask_ratio": -0.1}, {"mask": "pixel"}):
        with pytest.raises(ValueError, match="mgd: "):
            build_loss("mgd", **bad)
