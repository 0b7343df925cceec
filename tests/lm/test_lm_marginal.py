"""The teacher's next-character distribution marginalised over its own token boundaries
(data/lm_marginal.py, the ``marginal_kl`` loss): hand-built prefix tables and anchors, the target worked
out by hand, the plain forward KL when both sides use one character tokenizer, and a run end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from distill.cli import main
from distill.data import build_dataset
from distill.data.lm_align import boundary_ends, shared_keyer
from distill.data.lm_marginal import anchor_positions, prefix_table
from distill.losses.forward_kl import forward_kl
from distill.losses.marginal_kl import marginal_kl, marginal_targets
from distill.tasks import build_task
from lm.lm_helpers import corpus

TEACHER = ["a", "ab", "b", "ba", "abc", "c"]
STUDENT = ["a", "b", "c"]


def test_prefix_table_keys_each_tokens_remainder():
    index, keys, token = prefix_table(TEACHER, shared_keyer(STUDENT, TEACHER))
    assert set(index) == {"a", "ab", "b", "ba", "abc", "c"}
    # after "a": "ab" continues with b, "abc" with b(c): both keyed as the student's b (id 1)
    assert keys[index["a"]].tolist() == [-1, 1, -1, -1, 1, -1]
    assert keys[index["ab"]].tolist() == [-1, -1, -1, -1, 2, -1]
    assert token[index["a"]] == 0 and token[index["abc"]] == 4


def test_anchors_are_the_teacher_row_before_the_covering_token():
    # text "abab": teacher "ab|ab", student characters
    index, _, _ = prefix_table(TEACHER, shared_keyer(STUDENT, TEACHER))
    student = torch.tensor([boundary_ends([1, 2, 3, 4], "student")])
    teacher = torch.tensor([boundary_ends([2, 4], "teacher")])
    anchor, prefix = anchor_positions("abab", [0], student, teacher, index)
    assert anchor.tolist() == [[-1, -1, 0, 0]]  # inside the first teacher token: no anchor
    assert prefix.tolist() == [[-1, -1, index["a"], index["ab"]]]


def test_target_adds_the_continuing_tokens_and_the_prefix_tokens_own_share():
    index, keys, token = prefix_table(TEACHER, shared_keyer(STUDENT, TEACHER))
    p = torch.tensor([0.2, 0.3, 0.1, 0.1, 0.1, 0.2])  # a, ab, b, ba, abc, c at the anchor row
    after = torch.tensor([[0.5, 0.25, 0.25]])  # what follows the token "a" when it ends
    row = index["a"]
    target = marginal_targets(p.log()[None], keys[row][None], token[row][None], after, 3)
    # b: p(ab) + p(abc) + p(a) * 0.25; a: p(a) * 0.5; c: p(a) * 0.25; over p(a) + p(ab) + p(abc)
    expected = torch.tensor([0.1, 0.4 + 0.05, 0.05]) / 0.6
    torch.testing.assert_close(target[0], expected)


def test_one_character_tokenizer_on_both_sides_is_the_forward_kl_after_the_first_position():
    g = torch.Generator().manual_seed(0)
    V, T = 5, 6
    ids = torch.randint(0, V, (2, T + 1), generator=g)
    student = torch.randn(2, T, V, generator=g)
    teacher = 2 * torch.randn(2, T, V, generator=g)
    labels = ids[:, 1:].clone()
    labels[1, 4:] = -100
    chars = [chr(ord("a") + i) for i in range(V)]
    index, keys, token = prefix_table(chars, shared_keyer(chars, chars))
    position = torch.arange(T).expand(2, T)
    prefix = torch.tensor([[index[chars[int(i)]] for i in row] for row in ids[:, :-1]])
    value = marginal_kl(student, teacher, labels, position - 1, prefix, position,
                        torch.arange(V), keys, token)  # fmt: skip
    first_ignored = labels.clone()
    first_ignored[:, 0] = -100
    plain = forward_kl(student, teacher, first_ignored)
    # the same sum over positions 1.., divided by every valid target
    scale = int((first_ignored != -100).sum()) / int((labels != -100).sum())
    torch.testing.assert_close(value, plain * scale, rtol=1e-5, atol=1e-6)


def test_marginal_tables_ride_with_character_student_and_bpe_teacher_rows(tmp_path: Path):
    pytest.importorskip("tokenizers")
    root = corpus(tmp_path / "corpus")
    data = build_dataset("shakespeare", split="train", root=str(root), block_size=24,
                         tokenizer="char", teacher_tokenizer="bpe", vocab_size=300)  # fmt: skip
    anchor, prefix, keys, token = data.marginal
    assert (anchor >= 0).float().mean() > 0.9  # all but the first teacher token of each row
    texts = data.teacher_tokenizer.token_texts()
    for row in (0, len(data) - 1):
        student = "".join(data.tokenizer.decode([i]) for i in data.input_ids[row].tolist())
        teacher = [texts[i] for i in data.teacher_input_ids[row].tolist()]
        ends = [len("".join(teacher[: k + 1])) for k in range(len(teacher))]
        for j, a in enumerate(anchor[row].tolist()):
            if a >= 0:  # the text between the anchor's boundary and the position is the prefix
                u = student[ends[a] : j + 1]
                assert any(t.startswith(u) for t in texts) and prefix[row, j] >= 0
    batch = build_task("causal_lm").split(data.batch(torch.tensor([0, 1])))
    assert batch.extras["teacher_anchor"].shape == batch.targets.shape
    assert batch.extras["prefix_keys"].shape == (len(keys), data.teacher_num_classes)


def test_bpe_teacher_distils_into_character_student_with_marginal_kl(tmp_path: Path, capsys):
    pytest.importorskip("tokenizers")
    root = corpus(tmp_path / "corpus")
    small = ["n_layer=1", "n_head=2", "n_embd=16"]
    args = [f"data.root={root}", "data.options.block_size=16", "data.train_subset=8",
            "data.test_subset=4", "train.batch_size=4", "train.eval_batch_size=4",
            "train.progress=false", "train.log_every=1", "data.options.vocab_size=300"]  # fmt: skip
    teacher = tmp_path / "teacher"
    code = main(["train", "shakespeare/teacher_bpe", *args, "student.name=gpt",
                 *(f"student.options.{o}" for o in small), f"output={teacher}"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    student = tmp_path / "marginal"
    code = main(["train", "shakespeare/aligned_kl", *args, f"teacher.weights={teacher}",
                 "teacher.name=gpt", *(f"teacher.options.{o}" for o in small),
                 "distill.terms.0.loss=marginal_kl", f"output={student}"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    logged = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert len(steps) == 2 and all(
        math.isfinite(r["marginal_kl"]) and r["marginal_kl"] > 0 for r in steps
    )
