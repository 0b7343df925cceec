"""The contract every registered loss keeps. It loops over the registry, so a new loss is covered as soon
as its module exists: metadata and docstring, finite scalar output, gradients to the student side only,
trainable parts trained, zero at identity where the paper defines it, batch-size invariance where it
holds, bf16 autocast, and (for losses on token sequences) indifference to what padded positions hold.

Inputs come from the loss's ``inputs`` metadata (see ``distill.losses``); a loss whose inputs fit none of
the standard shapes overrides ``example_inputs(batch_size, generator) -> (student, teacher)`` (which
``DistillLoss`` answers with None). Losses that declare ``boxes``/``box_index`` get a few ground-truth
boxes per image (the last image has none).
"""

from __future__ import annotations

import inspect
import sys

import pytest
import torch

from distill.losses import LOSSES, build_loss
from distill.losses.base import DistillLoss

NAMES = LOSSES.names()
KINDS = {"logit", "feature", "relation", "contrastive"}
INPUTS = {
    "logits",
    "maps",
    "vectors",
    "maps_list",
    "sequences",
    "attentions",
    "attention_relations",
    "anchors",
    "box_distributions",
    "token_logits",
}
B, CLASSES = 8, 10
SEQ, HEADS = 6, 2  # token sequences (B, SEQ, D) and attention matrices (B, HEADS, SEQ, SEQ)
ANCHORS, REG_MAX = 21, 16  # detection heads: 4x4 + 2x2 + 1x1 anchor points, DFL bins per box side


def _meta(name: str) -> dict:
    return LOSSES.meta(name)


def make_inputs(name: str, batch: int = B, same_shape: bool = False, seed: int = 0):
    """(student, teacher) example tensors for loss ``name``; teacher wider than the student unless
    ``same_shape`` or the loss needs equal shapes."""
    g = torch.Generator().manual_seed(seed)
    cls = LOSSES.get(name)
    example = cls.example_inputs(batch, g)
    if example is not None:
        return example
    same = same_shape or cls.needs_same_shape
    kind = _meta(name)["inputs"]

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    if kind == "logits":
        return rand(batch, CLASSES), 2 * rand(batch, CLASSES)
    if kind == "token_logits":  # language models: next-token logits (B, T, V)
        return rand(batch, SEQ, CLASSES), 2 * rand(batch, SEQ, CLASSES)
    if kind == "vectors":
        return rand(batch, 16), rand(batch, 16 if same else 32)
    if kind == "maps":
        return rand(batch, 8 if not same else 16, 4, 4), rand(batch, 16, 4, 4)
    if kind == "sequences":
        return rand(batch, SEQ, 16), rand(batch, SEQ, 16 if same else 32)
    if kind == "anchors":  # detection class logits (B, num_classes, anchors)
        return rand(batch, CLASSES, ANCHORS), 2 * rand(batch, CLASSES, ANCHORS)
    if kind == "box_distributions":  # DFL box logits (B, 4 * reg_max, anchors)
        return rand(batch, 4 * REG_MAX, ANCHORS), 2 * rand(batch, 4 * REG_MAX, ANCHORS)
    if kind == "attentions":
        return rand(batch, HEADS, SEQ, SEQ).softmax(-1), rand(batch, HEADS, SEQ, SEQ).softmax(-1)
    if kind == "maps_list":
        s = [rand(batch, 8, 8, 8), rand(batch, 16, 4, 4)]
        t = (
            [rand(batch, 8, 8, 8), rand(batch, 16, 4, 4)]
            if same
            else [
                rand(batch, 16, 8, 8),
                rand(batch, 32, 4, 4),
            ]
        )
        return s, t
    raise AssertionError(f"{name}: unknown inputs kind {kind!r}")


def _seq_len(inputs) -> int:
    """Token count of sequence inputs: ``(B, T, D)`` or ``(B, heads, T, T)`` (0 for other inputs)."""
    x = inputs[0] if isinstance(inputs, list) else inputs
    return x.shape[-1] if x.ndim == 4 else x.shape[1] if x.ndim == 3 else 0


def _padding_mask(batch: int, length: int) -> torch.Tensor:
    """(B, T) attention mask with sequences of 1 .. T real tokens (1 real, 0 padding)."""
    lengths = torch.arange(batch) % max(length, 1) + 1
    return (torch.arange(length)[None, :] < lengths[:, None]).long()


def _boxes(batch: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Two normalised xyxy boxes on every image but the last (a background-only image)."""
    box_index = torch.arange(batch - 1).repeat_interleave(2)
    corner = 0.6 * torch.rand(len(box_index), 2, generator=g)
    size = 0.1 + 0.3 * torch.rand(len(box_index), 2, generator=g)
    return {
        "boxes": torch.cat([corner, corner + size], dim=1),
        "box_index": box_index,
        "box_labels": torch.randint(0, CLASSES, (len(box_index),), generator=g),
    }


def _extras(loss, batch: int, seed: int = 0, inputs=None) -> dict:
    g = torch.Generator().manual_seed(seed + 1)
    available = {
        "labels": torch.randint(0, CLASSES, (batch,), generator=g),
        "index": torch.arange(batch),
        **_boxes(batch, g),
    }
    if inputs is not None and _seq_len(inputs):
        available["attention_mask"] = _padding_mask(batch, _seq_len(inputs))
    if _meta(loss_name(loss)).get("inputs") == "token_logits":  # targets (B, T), -100 = not scored
        targets = torch.randint(0, CLASSES, (batch, SEQ), generator=g)
        available["labels"] = targets.masked_fill(_padding_mask(batch, SEQ) == 0, -100)
        # a teacher of another tokenizer, aligned by characters (aligned_kl): here the same tokens,
        # every third position without a teacher token ending at the same character
        position = torch.arange(SEQ).expand(batch, SEQ)
        available["teacher_position"] = position.masked_fill(position % 3 == 2, -1)
        available["student_vocab_key"] = torch.arange(CLASSES)
        available["teacher_vocab_key"] = torch.arange(CLASSES)
        # marginal_kl: the row before each position, one-character tokens (no longer token continues)
        available["teacher_anchor"] = position - 1
        available["teacher_prefix"] = torch.randint(0, CLASSES, (batch, SEQ), generator=g)
        available["prefix_keys"] = torch.full((CLASSES, CLASSES), -1)
        available["prefix_token"] = torch.arange(CLASSES)
    wanted = getattr(loss, "extra_inputs", ())
    missing = [k for k in wanted if k not in available]
    assert not missing, f"contract test does not know how to make extras {missing}"
    return {k: available[k] for k in wanted}


def loss_name(loss) -> str:
    """The registry name of a built loss (its class's)."""
    return next(n for n in NAMES if LOSSES.get(n) is type(loss))


def _requires_grad(x, flag: bool = True):
    """A copy that tracks gradients; integer tensors in a list (a teacher's top-k ids) stay as they are."""
    if isinstance(x, list):
        return [t.clone().requires_grad_(flag) if t.is_floating_point() else t for t in x]
    return x.clone().requires_grad_(flag)


def _tensors(x) -> list[torch.Tensor]:
    return list(x) if isinstance(x, list) else [x]


def _built(name: str, student, teacher, num_samples: int = 64):
    torch.manual_seed(0)
    loss = build_loss(name)
    if callable(getattr(loss, "build", None)):
        loss.build(student, teacher, num_samples=num_samples)
    return loss


@pytest.mark.parametrize("name", NAMES)
def test_metadata_and_docstring(name):
    meta = _meta(name)
    for key in ("paper", "year", "kind", "consumes", "inputs", "taps", "weight"):
        assert meta.get(key) not in (None, ""), f"loss {name!r} lacks {key!r} metadata"
    assert meta["kind"] in KINDS, meta["kind"]
    assert meta["inputs"] in INPUTS, meta["inputs"]
    assert meta.get("identity") in (None, "zero")
    cls = LOSSES.get(name)
    assert issubclass(cls, DistillLoss), f"{name}: a shipped loss subclasses DistillLoss"
    assert cls.builds == (cls.build is not DistillLoss.build)
    doc = sys.modules[cls.__module__].__doc__ or ""
    assert str(meta["year"]) in doc, (
        f"{name}: the module docstring should cite the paper ({meta['year']})"
    )
    params = inspect.signature(cls).parameters.values()
    assert all(
        p.default is not p.empty or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params
    ), f"{name}: every constructor option needs a default (the paper's)"


@pytest.mark.parametrize("name", NAMES)
def test_finite_scalar_with_gradients_to_student_only(name):
    s0, t0 = make_inputs(name)
    loss = _built(name, s0, t0)
    s, t = _requires_grad(s0), _requires_grad(t0)
    value = loss(s, t, **_extras(loss, B, inputs=s0))
    assert value.ndim == 0, f"{name} returned shape {tuple(value.shape)}"
    assert value.dtype == torch.float32
    assert torch.isfinite(value)
    value.backward()
    grads = [x.grad for x in _tensors(s)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), (
        f"{name}: no gradient to student"
    )
    assert any(g.abs().sum() > 0 for g in grads), f"{name}: gradient to the student is all zero"
    for x in _tensors(t):
        assert x.grad is None or not x.grad.any(), f"{name}: gradient reached the teacher tensors"
    trainable = [p for p in loss.parameters() if p.requires_grad]
    if trainable:  # connectors, heads, fusion modules train with the student
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable), (
            f"{name}: its trainable parts get no gradient"
        )


@pytest.mark.parametrize("name", [n for n in NAMES if _meta(n).get("identity") == "zero"])
def test_zero_at_identity(name):
    s, _ = make_inputs(name, same_shape=True)
    s = [x.abs() + 0.1 for x in s] if isinstance(s, list) else s
    t = [x.clone() for x in s] if isinstance(s, list) else s.clone()
    loss = _built(name, s, t)
    value = loss(s, t, **_extras(loss, B, inputs=s))
    assert abs(float(value)) < 1e-5, f"{name}: loss(x, x) = {float(value)}, expected 0"


@pytest.mark.parametrize("name", [n for n in NAMES if _meta(n).get("batch_invariant", True)])
def test_batch_size_invariance(name):
    """Repeating the batch leaves a mean-reduced loss unchanged."""
    s, t = make_inputs(name)
    loss = _built(name, s, t)
    extras = _extras(loss, B, inputs=s)

    def twice(x):
        return [torch.cat([a, a]) for a in x] if isinstance(x, list) else torch.cat([x, x])

    def twice_extra(key, value):  # box_index of the repeat points at the repeated images
        if key.endswith("_vocab_key") or key.startswith("prefix_"):  # per vocabulary, not per row
            return value
        return torch.cat([value, value + B if key == "box_index" else value])

    one = loss(s, t, **extras)
    two = loss(twice(s), twice(t), **{k: twice_extra(k, v) for k, v in extras.items()})
    torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-5)


def _garble(x: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Put large random values (and a NaN) wherever ``x`` belongs to a padded token: ``(B, T, D)``
    rows of padded tokens, ``(B, heads, T, T)`` entries whose query or key is padding."""
    real = mask.bool()
    if x.ndim == 3:
        keep = real[:, :, None]
    else:
        keep = (real[:, :, None] & real[:, None, :])[:, None]
    keep = keep.expand_as(x)
    noise = 1e3 * torch.randn(x.shape, generator=g)
    noise[(~keep).nonzero()[0].unbind()] = float("nan")  # one padded entry is not even a number
    return torch.where(keep, x, noise)


@pytest.mark.parametrize(
    "name", [n for n in NAMES if "attention_mask" in getattr(LOSSES.get(n), "extra_inputs", ())]
)
def test_padded_positions_change_nothing(name):
    """Losses on token sequences see only real tokens: whatever padding holds, value and gradients stay."""
    s, t = make_inputs(name)
    loss = _built(name, s, t)
    extras = _extras(loss, B, inputs=s)
    mask = extras["attention_mask"]
    assert not mask.all() and mask.any(dim=1).all()
    g = torch.Generator().manual_seed(5)

    def garbled(x):
        return [_garble(a, mask, g) for a in x] if isinstance(x, list) else _garble(x, mask, g)

    s_clean, s_noisy = _requires_grad(s), _requires_grad(garbled(s))
    clean = loss(s_clean, t, **extras)
    noisy = loss(s_noisy, garbled(t), **extras)
    torch.testing.assert_close(noisy, clean)
    clean.backward()
    noisy.backward()
    for a, b in zip(_tensors(s_clean), _tensors(s_noisy), strict=True):
        assert torch.isfinite(b.grad).all(), f"{name}: padding leaked into the gradient"
        torch.testing.assert_close(b.grad, a.grad)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast(name):
    s, t = make_inputs(name)
    loss = _built(name, s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(_requires_grad(s), t, **_extras(loss, B, inputs=s))
    assert value.ndim == 0 and torch.isfinite(value)
    value.float().backward()


@pytest.mark.parametrize("name", NAMES)
def test_bad_options_fail_at_construction(name):
    """Unknown options are refused with the valid ones named (recipes check the same way)."""
    from distill.errors import DistillError

    with pytest.raises(DistillError, match="temperatur|option|argument"):
        build_loss(name, not_an_option=1)
