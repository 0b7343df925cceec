"""CWD (Shu et al., ICCV 2021) against the official code and its defining properties.

The reference transcribes ``CriterionCWD`` (``norm_type='channel'``, ``divergence='kl'``) and
``ChannelNorm`` from the authors' repository irfanICMLL/TorchDistiller,
``SemSeg-distill/utils/criterion.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.losses import build_loss
from distill.losses.cwd import cwd_loss


def reference_cwd(preds_s: torch.Tensor, preds_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """CriterionCWD('channel', 'kl', temperature).forward, as in the official code."""
    n, c, h, w = preds_s.shape

    def channel_norm(featmap):
        return featmap.reshape((n, c, -1)).softmax(dim=-1)

    norm_s = channel_norm(preds_s / temperature)
    norm_t = channel_norm(preds_t.detach() / temperature)
    loss = nn.KLDivLoss(reduction="sum")(norm_s.log(), norm_t)
    loss /= n * c
    return loss * temperature**2


@pytest.mark.parametrize("tau", [1.0, 4.0])
@pytest.mark.parametrize("shape", [(4, 6, 5, 7), (2, 19, 8, 8)])
def test_matches_official_code(tau, shape):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(*shape, generator=g) * 3, torch.randn(*shape, generator=g) * 3
    ours = build_loss("cwd", tau=tau)(s, t)
    torch.testing.assert_close(ours, reference_cwd(s, t, tau), rtol=1e-5, atol=1e-6)


def test_default_tau_is_the_papers():
    assert build_loss("cwd").tau == 4.0


def test_invariant_to_a_constant_per_channel():
    """Each channel is a softmax over locations: shifting a whole channel changes nothing."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 5, 4, 4, generator=g), torch.randn(3, 5, 4, 4, generator=g)
    shift_s, shift_t = torch.randn(3, 5, 1, 1, generator=g), torch.randn(3, 5, 1, 1, generator=g)
    torch.testing.assert_close(cwd_loss(s + 10 * shift_s, t - 7 * shift_t), cwd_loss(s, t))


def test_channels_are_independent_distributions():
    """The loss is the mean over (sample, channel) of per-channel KLs: one channel alone gives its own KL."""
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    per_channel = torch.stack(
        [
            cwd_loss(s[b : b + 1, c : c + 1], t[b : b + 1, c : c + 1])
            for b in range(2)
            for c in range(3)
        ]
    )
    torch.testing.assert_close(cwd_loss(s, t), per_channel.mean())


def test_bad_inputs_are_refused():
    loss = build_loss("cwd")
    with pytest.raises(ValueError, match="projector"):
        loss(torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="spatial maps"):
        loss(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="tau"):
        build_loss("cwd", tau=0)
