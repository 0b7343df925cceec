"""The small GPT: causality, hidden states and taps, KV-cache generation, students cut from a teacher."""

from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.models import MODELS, build_model, count_parameters, student_from_teacher
from distill.models.gpt import GPT
from distill.taps import FeatureTaps


def _tiny(**options) -> GPT:
    torch.manual_seed(0)
    options = {"block_size": 12, "n_layer": 3, "n_head": 2, "n_embd": 16, **options}
    return build_model("gpt", num_classes=11, **options).eval()


@pytest.mark.parametrize("name", [n for n in MODELS.names() if MODELS.meta(n)["family"] == "gpt"])
def test_every_lm_builds_runs_and_backpropagates(name: str):
    model = build_model(name, num_classes=9, block_size=8)
    logits = model(torch.randint(0, 9, (2, 8)))
    assert logits.shape == (2, 8, 9) and torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_registered_sizes():
    assert 0.5e6 <= count_parameters(build_model("gpt_teacher", num_classes=84)) <= 1e6
    assert 55e3 <= count_parameters(build_model("gpt_student", num_classes=84)) <= 70e3


def test_logits_are_causal():
    model = _tiny()
    ids = torch.randint(0, 11, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 11
    a, b = model(ids), model(changed)
    assert a.shape == (2, 10, 11)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)  # a later token never changes earlier rows
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_hidden_states_are_the_blocks_outputs():
    model = _tiny()
    ids = torch.randint(0, 11, (2, 7))
    with FeatureTaps(model, ["blocks.0", "blocks.2"]) as taps:
        logits, states = model(ids, output_hidden_states=True)
    assert len(states) == 4 and states[0].shape == (2, 7, 16)
    assert torch.equal(taps["blocks.0"], states[1])
    assert torch.equal(taps["blocks.2"], states[3])
    assert torch.equal(logits, model(ids))


def test_sequences_longer_than_the_block_are_refused():
    with pytest.raises(DistillError, match="longer than block_size=12"):
        _tiny()(torch.zeros(1, 13, dtype=torch.long))


@pytest.mark.parametrize("temperature, top_k", [(0.0, None), (1.0, None), (0.8, 3)])
def test_kv_cache_generates_what_recomputing_generates(temperature, top_k):
    model = _tiny()
    prompt = torch.randint(0, 11, (2, 3))
    # 15 new tokens run past block_size=12: the window slides and the cache is rebuilt
    runs = [
        model.generate(prompt, 15, temperature, top_k, use_cache=cached,
                       generator=torch.Generator().manual_seed(7))
        for cached in (True, False)
    ]  # fmt: skip
    assert runs[0].shape == (2, 18)
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0][:, :3], prompt)


def test_cached_step_logits_match_the_full_forward():
    model = _tiny()
    ids = torch.randint(0, 11, (1, 9))
    full = model(ids)
    logits, cache = model.step(ids[:, :4], None)
    assert torch.allclose(logits, full[:, 3], atol=1e-5)
    logits, cache = model.step(ids[:, 4:7], cache)  # several tokens after a cache: explicit mask
    assert torch.allclose(logits, full[:, 6], atol=1e-5)
    logits, _ = model.step(ids[:, 7:8], cache)
    assert torch.allclose(logits, full[:, 7], atol=1e-5)


def test_from_teacher_keeps_the_chosen_blocks():
    teacher = _tiny()
    student = student_from_teacher(teacher, uniform=2)  # blocks 0 and 1 of 3 (every 3//2-th from 0)
    assert len(student.blocks) == 2
    for mine, theirs in (
        (student.blocks[0], teacher.blocks[0]),
        (student.blocks[1], teacher.blocks[1]),
    ):
        for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
            assert torch.equal(a, b) and a is not b  # copies, not the teacher's own tensors
    picked = student_from_teacher(teacher, layers=[2])
    assert torch.equal(picked.blocks[0].attn.qkv.weight, teacher.blocks[2].attn.qkv.weight)
    assert picked.head.weight is picked.tok_emb.weight  # the tie survives the copy
    assert torch.equal(picked.tok_emb.weight, teacher.tok_emb.weight)
    ids = torch.randint(0, 11, (1, 5))
    assert picked(ids).shape == (1, 5, 11)
    assert len(teacher.blocks) == 3  # the teacher is untouched


def test_from_teacher_narrow_and_bad_options():
    teacher = _tiny()
    narrow = student_from_teacher(teacher, uniform=1, hidden_size=8)
    assert narrow.tok_emb.embedding_dim == 8 and len(narrow.blocks) == 1
    assert narrow.blocks[0].attn.n_head == 1  # heads keep the teacher's head size (16 / 2)
    with pytest.raises(DistillError, match="hidden_size=12"):
        student_from_teacher(teacher, uniform=1, hidden_size=12)
    with pytest.raises(DistillError, match="layer 5 is out of range"):
        student_from_teacher(teacher, layers=[5])


def test_bad_sizes_are_one_line_errors():
    with pytest.raises(DistillError, match="n_embd=10"):
        build_model("gpt", num_classes=11, n_head=4, n_embd=10)
    with pytest.raises(DistillError, match="dropout"):
        build_model("gpt", num_classes=11, dropout=1.0)
