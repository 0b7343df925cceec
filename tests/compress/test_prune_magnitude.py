"""Unstructured magnitude pruning: the smallest weights go, the rest is untouched, masks hold while training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.compress.prune import count_nonzero, magnitude_prune, make_permanent
from distill.errors import DistillError


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)
    )


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [model[0].weight.detach(), model[4].weight.detach()]


def test_global_pruning_removes_the_smallest_weights_and_keeps_the_rest():
    model = small_net()
    original = [w.clone() for w in weights(model)]
    pruned = magnitude_prune(model, 0.6)
    all_before = torch.cat([w.flatten() for w in original])
    all_after = torch.cat([w.flatten() for w in weights(pruned)])
    zeroed = all_after == 0
    assert zeroed.sum() == round(0.6 * all_before.numel())
    assert all_before[zeroed].abs().max() <= all_before[~zeroed].abs().min()  # ranked globally
    assert torch.equal(all_after[~zeroed], all_before[~zeroed])  # survivors unchanged
    assert all(torch.equal(a, b) for a, b in zip(weights(model), original, strict=True))  # a copy
    assert "0.weight_orig" not in pruned.state_dict()  # permanent: a plain model again
    assert pruned[1].weight.count_nonzero() == 8  # BN scales are not pruned
    nonzero, total = count_nonzero(pruned)
    assert total == sum(p.numel() for p in model.parameters())
    assert nonzero == count_nonzero(model)[0] - int(zeroed.sum())  # (BN biases start at zero)


def test_layer_scope_prunes_each_layer_by_the_same_fraction():
    pruned = magnitude_prune(small_net(), 0.5, scope="layer")
    for w in weights(pruned):
        assert int((w == 0).sum()) == round(0.5 * w.numel())


def test_masks_keep_pruned_weights_at_zero_during_fine_tuning():
    pruned = magnitude_prune(small_net(), 0.7, permanent=False)
    zeros = [w == 0 for w in weights(pruned)]
    opt = torch.optim.SGD(pruned.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        pruned(torch.randn(4, 1, 6, 6)).pow(2).mean().backward()
        opt.step()
    make_permanent(pruned)
    assert "0.weight_orig" not in pruned.state_dict()
    for w, z in zip(weights(pruned), zeros, strict=True):
        assert torch.all(w[z] == 0) and torch.any(w[~z] != 0)


def test_ignored_layers_are_left_dense():
    pruned = magnitude_prune(small_net(), 0.8, ignored_layers=["4"])
    assert pruned[4].weight.count_nonzero() == pruned[4].weight.numel()
    assert int((pruned[0].weight == 0).sum()) == round(0.8 * pruned[0].weight.numel())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"amount": 1.0}, "amount must be a fraction in [0, 1), got 1.0"),
        ({"amount": 0.5, "layer_types": (nn.ReLU,)}, "module '2' (ReLU) has no weight parameter"),
        ({"amount": 0.5, "layer_types": (nn.LSTM,)}, "no LSTM layers to prune"),
        ({"amount": 0.5, "ignored_layers": ["44"]}, "Did you mean '4'"),
        ({"amount": 0.5, "scope": "per-layer"}, "scope must be 'global' or 'layer'"),
    ],
)
def test_bad_requests_name_the_problem(kwargs, message):
    with pytest.raises(DistillError) as err:
        magnitude_prune(small_net(), **kwargs)
    assert message in str(err.value)
