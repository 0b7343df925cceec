"""FGD (Yang et al., CVPR 2022) against the authors' code and its defining properties.

The reference transcribes yzd-v/FGD ``mmdet/distillation/losses/fgd.py`` (``FeatureLoss``, the version
with ``Mask_fg[i][hmin:hmax+1, wmin:wmax+1]``): boxes in pixels of ``img_shape``, one loop per image and
box, mmcv's ``kaiming_init``/``constant_init`` replaced by the same torch initialisers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.distiller import Distiller, Term
from distill.errors import DistillError
from distill.losses import build_loss
from distill.losses._boxes import fgd_masks
from distill.losses.fgd import focal_losses
from distill.tasks.base import Batch, Task


class ReferenceFGD(nn.Module):
    def __init__(self, channels, temp, alpha_fgd, beta_fgd, gamma_fgd, lambda_fgd):
        super().__init__()
        self.temp, self.alpha_fgd, self.beta_fgd = temp, alpha_fgd, beta_fgd
        self.gamma_fgd, self.lambda_fgd = gamma_fgd, lambda_fgd
        self.conv_mask_s = nn.Conv2d(channels, 1, kernel_size=1)
        self.conv_mask_t = nn.Conv2d(channels, 1, kernel_size=1)

        def block():
            return nn.Sequential(
                nn.Conv2d(channels, channels // 2, kernel_size=1),
                nn.LayerNorm([channels // 2, 1, 1]),
                nn.ReLU(inplace=True),
                nn.Conv2d(channels // 2, channels, kernel_size=1),
            )

        self.channel_add_conv_s, self.channel_add_conv_t = block(), block()

    def forward(self, preds_S, preds_T, gt_bboxes, img_metas):
        N, C, H, W = preds_S.shape
        S_attention_t, C_attention_t = self.get_attention(preds_T, self.temp)
        S_attention_s, C_attention_s = self.get_attention(preds_S, self.temp)
        Mask_fg = torch.zeros_like(S_attention_t)
        Mask_bg = torch.ones_like(S_attention_t)
        wmin, wmax, hmin, hmax = [], [], [], []
        for i in range(N):
            new_boxxes = torch.ones_like(gt_bboxes[i])
            new_boxxes[:, 0] = gt_bboxes[i][:, 0] / img_metas[i]["img_shape"][1] * W
            new_boxxes[:, 2] = gt_bboxes[i][:, 2] / img_metas[i]["img_shape"][1] * W
            new_boxxes[:, 1] = gt_bboxes[i][:, 1] / img_metas[i]["img_shape"][0] * H
            new_boxxes[:, 3] = gt_bboxes[i][:, 3] / img_metas[i]["img_shape"][0] * H
            wmin.append(torch.floor(new_boxxes[:, 0]).int())
            wmax.append(torch.ceil(new_boxxes[:, 2]).int())
            hmin.append(torch.floor(new_boxxes[:, 1]).int())
            hmax.append(torch.ceil(new_boxxes[:, 3]).int())
            area = (
                1.0
                / (hmax[i].view(1, -1) + 1 - hmin[i].view(1, -1))
                / (wmax[i].view(1, -1) + 1 - wmin[i].view(1, -1))
            )
            for j in range(len(gt_bboxes[i])):
                Mask_fg[i][hmin[i][j] : hmax[i][j] + 1, wmin[i][j] : wmax[i][j] + 1] = (
                    torch.maximum(
                        Mask_fg[i][hmin[i][j] : hmax[i][j] + 1, wmin[i][j] : wmax[i][j] + 1],
                        area[0][j],
                    )
                )
            Mask_bg[i] = torch.where(Mask_fg[i] > 0, 0, 1)
            if torch.sum(Mask_bg[i]):
                Mask_bg[i] /= torch.sum(Mask_bg[i])
        fg_loss, bg_loss = self.get_fea_loss(
            preds_S, preds_T, Mask_fg, Mask_bg, C_attention_t, S_attention_t
        )
        mask_loss = torch.sum(torch.abs(C_attention_s - C_attention_t)) / len(C_attention_s)
        mask_loss = mask_loss + torch.sum(torch.abs(S_attention_s - S_attention_t)) / len(
            S_attention_s
        )
        rela_loss = self.get_rela_loss(preds_S, preds_T)
        return (
            self.alpha_fgd * fg_loss
            + self.beta_fgd * bg_loss
            + self.gamma_fgd * mask_loss
            + self.lambda_fgd * rela_loss
        )

    def get_attention(self, preds, temp):
        N, C, H, W = preds.shape
        value = torch.abs(preds)
        fea_map = value.mean(axis=1, keepdim=True)
        S_attention = (H * W * F.softmax((fea_map / temp).view(N, -1), dim=1)).view(N, H, W)
        channel_map = value.mean(axis=2, keepdim=False).mean(axis=2, keepdim=False)
        C_attention = C * F.softmax(channel_map / temp, dim=1)
        return S_attention, C_attention

    def get_fea_loss(self, preds_S, preds_T, Mask_fg, Mask_bg, C_t, S_t):
        loss_mse = nn.MSELoss(reduction="sum")
        Mask_fg, Mask_bg = Mask_fg.unsqueeze(dim=1), Mask_bg.unsqueeze(dim=1)
        C_t = C_t.unsqueeze(dim=-1).unsqueeze(dim=-1)
        S_t = S_t.unsqueeze(dim=1)
        fea_t = torch.mul(torch.mul(preds_T, torch.sqrt(S_t)), torch.sqrt(C_t))
        fea_s = torch.mul(torch.mul(preds_S, torch.sqrt(S_t)), torch.sqrt(C_t))
        fg_loss = loss_mse(fea_s * torch.sqrt(Mask_fg), fea_t * torch.sqrt(Mask_fg)) / len(Mask_fg)
        bg_loss = loss_mse(fea_s * torch.sqrt(Mask_bg), fea_t * torch.sqrt(Mask_bg)) / len(Mask_bg)
        return fg_loss, bg_loss

    def spatial_pool(self, x, in_type):
        batch, channel, width, height = x.size()
        input_x = x.view(batch, channel, height * width).unsqueeze(1)
        context_mask = self.conv_mask_s(x) if in_type == 0 else self.conv_mask_t(x)
        context_mask = F.softmax(context_mask.view(batch, 1, height * width), dim=2).unsqueeze(-1)
        return torch.matmul(input_x, context_mask).view(batch, channel, 1, 1)

    def get_rela_loss(self, preds_S, preds_T):
        out_s = preds_S + self.channel_add_conv_s(self.spatial_pool(preds_S, 0))
        out_t = preds_T + self.channel_add_conv_t(self.spatial_pool(preds_T, 1))
        return nn.MSELoss(reduction="sum")(out_s, out_t) / len(out_s)


IMAGE_H, IMAGE_W = 48, 80  # stride 8: maps 6 x 10 (not square, so a swapped H/W shows)


def _case(seed=0, batch=3, channels=8, height=6, width=10):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, channels, height, width, generator=g)
    t = torch.randn(batch, channels, height, width, generator=g)
    counts = [2, 1, 0][:batch] + [1] * max(batch - 3, 0)  # the third image has no boxes
    box_index = torch.arange(batch).repeat_interleave(torch.tensor(counts))
    corner = 0.7 * torch.rand(len(box_index), 2, generator=g)
    size = 0.05 + 0.3 * torch.rand(len(box_index), 2, generator=g)
    boxes = torch.cat([corner, (corner + size).clamp(max=1)], dim=1)
    return s, t, boxes, box_index


def _reference_inputs(boxes, box_index, batch):
    scale = torch.tensor([IMAGE_W, IMAGE_H, IMAGE_W, IMAGE_H], dtype=torch.float32)
    gt = [boxes[box_index == i] * scale for i in range(batch)]
    return gt, [{"img_shape": (IMAGE_H, IMAGE_W, 3)}] * batch


def _built(s, t, **options):
    torch.manual_seed(0)
    loss = build_loss("fgd", **options)
    loss.build(s, t)
    return loss


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    "options",
    [{}, {"temperature": 1.0, "alpha": 2e-3, "beta": 1e-3, "gamma": 1e-3, "lambda_": 1e-5}],
)
def test_matches_the_authors_code(options):
    s, t, boxes, box_index = _case()
    loss = _built(s, t, **options)
    _randomise(loss, 1)  # a trained GcBlock, so the global part is not zero
    ref = ReferenceFGD(8, loss.temperature, loss.alpha, loss.beta, loss.gamma, loss.lambda_)
    for ours, theirs in (
        (loss.context_student.context_mask, ref.conv_mask_s),
        (loss.context_teacher.context_mask, ref.conv_mask_t),
        (loss.context_student.transform, ref.channel_add_conv_s),
        (loss.context_teacher.transform, ref.channel_add_conv_t),
    ):
        theirs.load_state_dict(ours.state_dict())
    expected = ref(s, t, *_reference_inputs(boxes, box_index, 3))
    torch.testing.assert_close(loss(s, t, boxes, box_index), expected, rtol=1e-5, atol=1e-7)


def test_masks_match_the_authors_loop_and_scale_with_box_size():
    _, _, boxes, box_index = _case(3, batch=4)
    fg, bg = fgd_masks(boxes, box_index, 4, 6, 10)
    for i in range(4):  # the official construction, one box at a time
        expected = torch.zeros(6, 10)
        for b in boxes[box_index == i]:
            w0, w1 = int(torch.floor(b[0] * 10)), int(torch.ceil(b[2] * 10))
            h0, h1 = int(torch.floor(b[1] * 6)), int(torch.ceil(b[3] * 6))
            area = 1.0 / ((h1 + 1 - h0) * (w1 + 1 - w0))
            expected[h0 : h1 + 1, w0 : w1 + 1] = expected[h0 : h1 + 1, w0 : w1 + 1].clamp(min=area)
        torch.testing.assert_close(fg[i], expected)
        assert torch.isclose(bg[i].sum(), torch.tensor(1.0)) and (bg[i][expected > 0] == 0).all()
    # one lone box: its foreground sums to 1 inside the map whatever its size (1 / cell count each)
    lone = torch.tensor([[0.2, 0.2, 0.45, 0.6]])
    fg, _ = fgd_masks(lone, torch.zeros(1, dtype=torch.long), 1, 16, 16)
    assert torch.isclose(fg.sum(), torch.tensor(1.0))


def test_boxes_give_a_nonzero_foreground_term_and_no_boxes_give_none():
    s, t, boxes, box_index = _case(4)
    fg, bg = fgd_masks(boxes, box_index, 3, 6, 10)
    fg_loss, bg_loss, _ = focal_losses(s, t, fg, bg, 0.5)
    assert fg_loss > 0 and bg_loss > 0
    empty = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    fg0, bg0 = fgd_masks(*empty, 3, 6, 10)
    assert fg0.sum() == 0 and torch.allclose(bg0.sum(dim=(1, 2)), torch.ones(3))
    loss = _built(s, t)
    value = loss(s.requires_grad_(), t, *empty)
    value.backward()
    assert torch.isfinite(value) and value > 0 and torch.isfinite(s.grad).all()


def test_a_box_over_the_whole_image_leaves_no_background():
    s, t, _, _ = _case(5, batch=1)
    fg, bg = fgd_masks(
        torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.zeros(1, dtype=torch.long), 1, 6, 10
    )
    assert (fg > 0).all() and bg.sum() == 0
    loss = _built(s, t)
    assert torch.isfinite(loss(s, t, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.zeros(1).long()))


def test_zero_for_identical_maps_until_the_gc_blocks_train_apart():
    s, _, boxes, box_index = _case(6)
    loss = _built(s, s)
    assert loss(s, s.clone(), boxes, box_index).item() == pytest.approx(0.0, abs=1e-9)
    _randomise(loss.context_student, 2)
    assert loss(s, s.clone(), boxes, box_index).item() > 0


def test_gradients_reach_the_student_and_the_gc_blocks_never_the_teacher():
    s, t, boxes, box_index = _case(7)
    loss = _built(s, t)
    _randomise(loss, 3)
    s, t = s.clone().requires_grad_(), t.clone().requires_grad_()
    loss(s, t, boxes, box_index).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None
    assert all(p.grad is not None for p in loss.parameters())


def test_errors():
    s, t, boxes, box_index = _case()
    with pytest.raises(DistillError, match="build"):
        build_loss("fgd")(s, t, boxes, box_index)
    loss = _built(s, t)
    with pytest.raises(DistillError, match="conv1x1 projector"):
        loss(s[:, :4], t, boxes, box_index)
    with pytest.raises(DistillError, match=r"box_index holds 0\.\.3 but the batch has 3 images"):
        loss(s, t, boxes, torch.tensor([0, 0, 3]))
    with pytest.raises(DistillError, match=r"boxes must be \(N, 4\)"):
        loss(s, t, boxes[:, :2], box_index)
    for bad in ({"temperature": 0.0}, {"alpha": -1.0}):
        with pytest.raises(ValueError, match="fgd: "):
            build_loss("fgd", **bad)


class _NeckTask(Task):
    """A stand-in detection task: the 'model' returns one neck map; boxes ride in Batch.extras."""

    name, primary_metric = "neck", "none"

    def split(self, batch):
        images, boxes, box_index = batch
        return Batch(images, None, {"boxes": boxes, "box_index": box_index})

    def forward(self, model, inputs):
        return {"p3": model(inputs)}

    def loss(self, outputs, batch):
        return outputs["p3"].pow(2).mean()


def test_one_training_step_through_the_distiller_with_a_projector():
    """Widths differ (4 vs 8 channels): conv1x1 projector, GcBlocks built by setup, all trained."""
    torch.manual_seed(0)
    student, teacher = (
        nn.Conv2d(3, 4, 3, stride=8, padding=1),
        nn.Conv2d(3, 8, 3, stride=8, padding=1),
    )
    term = Term(build_loss("fgd"), student="@p3", teacher="@p3", projector="conv1x1")
    distiller = Distiller(student, _NeckTask(), teacher=teacher, terms=[term])
    _, _, boxes, box_index = _case(8)
    batch = (torch.randn(3, 3, IMAGE_H, IMAGE_W), boxes, box_index)
    distiller.setup(batch)
    step = distiller(distiller.task.split(batch))
    step.parts["fgd"].backward()
    assert torch.isfinite(step.loss)
    assert student.weight.grad.abs().sum() > 0 and teacher.weight.grad is None
    assert term.loss.context_student.context_mask.weight.grad is not None
