"""FeatureTaps: capture by module name, ':in' inputs, errors, hook clean-up, detach."""

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.taps import FeatureTaps, TapError, resolve_module, split_tap


@pytest.fixture
def seq():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Sequential(), nn.ReLU())
        self.block[0].conv = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(6, 2)
        self.unused = nn.Linear(6, 2)

    def forward(self, x):
        x = self.stem(x)
        x = self.block[1](self.block[0].conv(x))
        return self.head(x.mean((2, 3)))


def all_hooks(model):
    return [
        h
        for m in model.modules()
        for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
    ]


def test_split_tap():
    assert split_tap("layer3:in") == ("layer3", True)
    assert split_tap("layer3") == ("layer3", False)


def test_captures_outputs_and_inputs_by_name(seq):
    x = torch.randn(2, 4)
    with FeatureTaps(seq, ["0", "1", "2:in"]) as taps:
        out = seq(x)
    h0 = x @ seq[0].weight.T + seq[0].bias
    h1 = torch.relu(h0)
    torch.testing.assert_close(taps["0"], h0)
    torch.testing.assert_close(taps["1"], h1)
    torch.testing.assert_close(taps["2:in"], h1)  # the input of the last Linear
    torch.testing.assert_close(out, h1 @ seq[2].weight.T + seq[2].bias)
    assert set(taps) == {"0", "1", "2:in"} and len(taps) == 3


def test_nested_names():
    torch.manual_seed(0)
    model = Nested()
    x = torch.randn(2, 3, 5, 5)
    with FeatureTaps(model, ["block.0.conv", "block.0.conv:in", "head:in"]) as taps:
        model(x)
    stem = model.stem(x)
    conv = model.block[0].conv(stem)
    torch.testing.assert_close(taps["block.0.conv:in"], stem)
    torch.testing.assert_close(taps["block.0.conv"], conv)
    torch.testing.assert_close(taps["head:in"], torch.relu(conv).mean((2, 3)))


def test_wrong_name_raises_at_construction_with_suggestion(seq):
    model = Nested()
    with pytest.raises(TapError) as info:
        FeatureTaps(model, ["head", "block.0.cnv"])
    msg = str(info.value)
    assert isinstance(info.value, DistillError)
    assert "'block.0.cnv'" in msg
    assert "Did you mean" in msg and "'block.0.conv'" in msg
    assert all_hooks(model) == []  # nothing registered by a failed construction
    with pytest.raises(TapError, match="names no module"):
        resolve_module(seq, "3")
    with pytest.raises(TapError):
        FeatureTaps(seq, ["7:in"])


def test_hooks_removed_after_block(seq):
    taps = FeatureTaps(seq, ["0", "2:in"])
    with taps:
        assert len(all_hooks(seq)) == 2
        seq(torch.randn(1, 4))
    assert all_hooks(seq) == []
    # captured values stay readable after the block
    assert taps["0"].shape == (1, 5)
    # and later forwards no longer capture
    before = taps["0"].clone()
    seq(torch.randn(1, 4) + 10)
    torch.testing.assert_close(taps["0"], before)


def test_hooks_removed_after_exception(seq):
    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom):
        with FeatureTaps(seq, ["0", "1"]):
            seq(torch.randn(1, 4))
            raise Boom
    assert all_hooks(seq) == []

    # an exception raised by the forward itself
    with pytest.raises(RuntimeError):
        with FeatureTaps(seq, ["0"]):
            seq(torch.randn(1, 7))  # wrong width
    assert all_hooks(seq) == []


def test_reentering_clears_previous_captures():
    model = Nested()
    taps = FeatureTaps(model, ["stem", "unused"])
    with taps:
        model(torch.randn(1, 3, 4, 4))
    with taps:
        pass
    with pytest.raises(TapError):
        taps["stem"]


def test_tap_on_module_that_did_not_run():
    model = Nested()
    with FeatureTaps(model, ["unused", "stem"]) as taps:
        model(torch.randn(1, 3, 4, 4))
    with pytest.raises(TapError, match="captured nothing"):
        taps["unused"]
    with pytest.raises(KeyError):
        taps["never-requested"]


def test_detach(seq):
    x = torch.randn(3, 4)
    with FeatureTaps(seq, ["1", "2:in"], detach=True) as taps:
        seq(x)
    assert not taps["1"].requires_grad and taps["1"].grad_fn is None
    assert not taps["2:in"].requires_grad
    with FeatureTaps(seq, ["1"]) as taps:
        seq(x)
    assert taps["1"].requires_grad  # default keeps the graph so feature losses can backprop
    taps["1"].sum().backward()
    assert seq[0].weight.grad is not None


def test_last_call_wins_when_module_runs_twice():
    lin = nn.Linear(2, 2)
    model = nn.Module()
    model.lin = lin
    a, b = torch.randn(1, 2), torch.randn(1, 2)
    with FeatureTaps(model, ["lin"]) as taps:
        lin(a)
        lin(b)
    torch.testing.assert_close(taps["lin"], lin(b))


def test_tuple_outputs_give_first_tensor():
    model = nn.Module()
    model.rnn = nn.GRU(3, 4, batch_first=True)
    x = torch.randn(2, 5, 3)
    with FeatureTaps(model, ["rnn"]) as taps:
        out, _ = model.rnn(x)
    torch.testing.assert_close(taps["rnn"], out)


def test_mapping_protocol_for_tap_that_did_not_run():
    model = Nested()
    with FeatureTaps(model, ["unused", "stem"]) as taps:
        model(torch.randn(1, 3, 4, 4))
    assert "stem" in taps
    assert "unused" not in taps  # consistent with iteration, which lists captured taps only
    assert taps.get("unused") is None


def test_taps_are_not_changed_by_a_later_inplace_op():
    """BN -> ReLU(inplace=True): the BN output and the ReLU's input are pre-activation (negatives kept),
    as OFD and AB need, and gradients still flow through the tapped values."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 1)
    )
    x = torch.randn(2, 1, 6, 6)
    with FeatureTaps(model, ["1", "2:in", "2"]) as taps:
        model(x)
    assert (taps["1"] < 0).any() and (taps["2:in"] < 0).any()
    assert torch.equal(taps["1"], taps["2:in"])
    assert (taps["2"] >= 0).all()
    taps["1"].pow(2).sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
