"""FT (Kim et al., NeurIPS 2018) against the official code and its defining properties.

The reference transcribes the authors' Jangho-Kim/Factor-Transfer-pytorch: ``Models/FeatureProjection.py``
(``Paraphraser`` with its modes, ``Translator``), ``utils.FT`` and the ``nn.L1Loss`` factor loss of
``train_student.py``. The reconstruction term is the paper's squared L2, as RepDistiller's paraphraser
stage (``nn.MSELoss``); the authors' ``train_Paraphraser.py`` uses L1 there.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses import build_loss
from distill.losses.ft import factor_transfer_loss


class ReferenceParaphraser(nn.Module):
    def __init__(self, in_planes, planes):
        super().__init__()
        self.leakyrelu = nn.LeakyReLU(0.1)
        self.conv0 = nn.Conv2d(in_planes, in_planes, kernel_size=3, stride=1, padding=1, bias=True)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=1, padding=1, bias=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=True)
        self.deconv0 = nn.ConvTranspose2d(
            planes, planes, kernel_size=3, stride=1, padding=1, bias=True
        )
        self.deconv1 = nn.ConvTranspose2d(
            planes, in_planes, kernel_size=3, stride=1, padding=1, bias=True
        )
        self.deconv2 = nn.ConvTranspose2d(
            in_planes, in_planes, kernel_size=3, stride=1, padding=1, bias=True
        )

    def forward(self, x, mode):
        if mode == 0:
            out = self.leakyrelu(self.conv0(x))
            out = self.leakyrelu(self.conv1(out))
            out = self.leakyrelu(self.conv2(out))
            out = self.leakyrelu(self.deconv0(out))
            out = self.leakyrelu(self.deconv1(out))
            out = self.leakyrelu(self.deconv2(out))
        if mode == 1:
            out = self.leakyrelu(self.conv0(x))
            out = self.leakyrelu(self.conv1(out))
            out = self.leakyrelu(self.conv2(out))
        return out


class ReferenceTranslator(nn.Module):
    def __init__(self, in_planes, planes):
        super().__init__()
        self.leakyrelu = nn.LeakyReLU(0.1)
        self.conv0 = nn.Conv2d(in_planes, in_planes, kernel_size=3, stride=1, padding=1, bias=True)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=1, padding=1, bias=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=True)

    def forward(self, x):
        out = self.leakyrelu(self.conv0(x))
        out = self.leakyrelu(self.conv1(out))
        return self.leakyrelu(self.conv2(out))


def FT(x):  # utils.FT
    return F.normalize(x.view(x.size(0), -1))


def _copy(src: nn.Module, dst: nn.Module) -> None:
    src_params, dst_params = list(src.parameters()), list(dst.parameters())
    assert [p.shape for p in src_params] == [p.shape for p in dst_params]
    with torch.no_grad():
        for a, b in zip(src_params, dst_params, strict=True):
            b.copy_(a)


def _pair(seed=0, student_size=6, teacher_size=6):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(4, 5, student_size, student_size, generator=g).relu()
    t = torch.randn(4, 16, teacher_size, teacher_size, generator=g).relu()
    return s, t


def _built(s, t, **options):
    torch.manual_seed(0)
    loss = build_loss("ft", **options)
    loss.build(s, t)
    return loss


@pytest.mark.parametrize("reconstruction_weight", [0.0, 0.3])
def test_matches_the_authors_code(reconstruction_weight):
    s, t = _pair()
    loss = _built(s, t, reconstruction_weight=reconstruction_weight)
    paraphraser, translator = ReferenceParaphraser(16, round(16 * 0.5)), ReferenceTranslator(5, 8)
    _copy(loss.paraphraser, paraphraser)
    _copy(loss.translator, translator)
    factor_t, factor_s = paraphraser(t, 1), translator(s)
    expected = nn.L1Loss()(FT(factor_s), FT(factor_t.detach()))
    expected = expected + reconstruction_weight * nn.MSELoss()(paraphraser(t, 0), t)
    torch.testing.assert_close(loss(s, t), expected, rtol=1e-5, atol=1e-7)


def test_defaults_are_the_papers():
    loss = build_loss("ft")
    assert (loss.rate, loss.p) == (0.5, 1)
    s, t = _pair()
    loss.build(s, t)
    assert loss.paraphraser.encoder[-2].out_channels == 8  # k * C_t
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loss.modules())  # the authors' modules


def test_paraphraser_trains_only_on_reconstruction():
    """The factor loss never reaches the paraphraser (the paper freezes it after its own stage)."""
    s, t = _pair(1)
    loss = _built(s, t, reconstruction_weight=0.5)
    loss(s.requires_grad_(), t).backward()
    grads = [p.grad.clone() for p in loss.paraphraser.parameters()]
    assert all(p.grad is not None for p in loss.translator.parameters())
    loss.zero_grad()
    reconstruction = loss.paraphraser.decoder(loss.paraphraser.encoder(t))
    (0.5 * F.mse_loss(reconstruction, t)).backward()
    for got, expected in zip(grads, (p.grad for p in loss.paraphraser.parameters()), strict=True):
        torch.testing.assert_close(got, expected)


def test_zero_reconstruction_weight_freezes_the_paraphraser():
    s, t = _pair(2)
    loss = _built(s, t, reconstruction_weight=0.0)
    assert not any(p.requires_grad for p in loss.paraphraser.parameters())
    loss(s, t).backward()
    assert all(p.grad is not None for p in loss.translator.parameters())


def test_factor_loss_ignores_the_scale_of_each_sample():
    """Factors are L2-normalised per sample: rescaling a sample's factor changes nothing."""
    g = torch.Generator().manual_seed(3)
    fs, ft = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    scale_s, scale_t = (
        torch.rand(3, 1, 1, 1, generator=g) * 10 + 0.1,
        torch.rand(3, 1, 1, 1, generator=g) + 0.1,
    )
    torch.testing.assert_close(
        factor_transfer_loss(fs * scale_s, ft * scale_t), factor_transfer_loss(fs, ft)
    )
    assert factor_transfer_loss(fs, 3 * fs) < 1e-7


def test_different_map_sizes_are_pooled():
    s, t = _pair(4, student_size=8, teacher_size=4)
    loss = _built(s, t)
    factor_s = loss.translator(s)
    expected = factor_transfer_loss(
        F.adaptive_avg_pool2d(factor_s, (4, 4)), loss.paraphraser.encoder(t)
    )
    rec = F.mse_loss(loss.paraphraser.decoder(loss.paraphraser.encoder(t)), t)
    torch.testing.assert_close(loss(s, t), expected + rec)


def test_errors():
    s, t = _pair()
    with pytest.raises(DistillError, match="build"):
        build_loss("ft")(s, t)
    with pytest.raises(DistillError, match="feature map"):
        build_loss("ft").build(torch.randn(2, 4), t)
    for bad in ({"rate": 0}, {"rate": 1.5}, {"p": 3}, {"reconstruction_weight": -1}):
        with pytest.raises(ValueError, match="ft: "):
            build_loss("ft", **bad)
