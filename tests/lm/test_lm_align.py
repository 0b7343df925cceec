"""Character-offset alignment of two tokenizations (data/lm_align.py) and the ``aligned_kl`` loss on it:
hand-built alignments and vocabularies, a character student against a BPE teacher, empty alignments,
and the plain forward KL when both sides use one tokenizer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from distill.cli import main
from distill.data import build_dataset
from distill.data.lm_align import align_positions, boundary_ends, vocab_keys
from distill.errors import DistillError
from distill.losses import build_loss
from distill.losses.aligned_kl import aligned_kl
from distill.losses.forward_kl import forward_kl
from distill.tasks import build_task
from lm.lm_helpers import corpus


def test_positions_align_where_both_tokenizations_end_at_one_character():
    # text "the cat": student "th|e| c|at", teacher "t|he| |cat"
    student = torch.tensor([boundary_ends([2, 3, 5, 7], "student")])
    teacher = torch.tensor([boundary_ends([1, 3, 4, 7], "teacher")])
    assert align_positions(student, teacher).tolist() == [[-1, 1, -1, 3]]
    # one tokenization on both sides: every position, to itself
    same = torch.tensor([boundary_ends([1, 2, 3], "student")])
    assert align_positions(same, torch.tensor([boundary_ends([1, 2, 3], "teacher")])).tolist() == [
        [0, 1, 2]
    ]


def test_a_token_ending_inside_a_character_never_aligns():
    # "é" as two byte pieces on both sides: both pieces "end" at character 1; only the second counts
    student = torch.tensor([boundary_ends([1, 1, 2], "student")])
    teacher = torch.tensor([boundary_ends([1, 1, 2], "teacher")])
    assert student.tolist() == [[-1, 2, 4]]
    assert align_positions(student, teacher).tolist() == [[-1, 1, 2]]


def test_vocabulary_keys_are_the_longest_shared_prefix():
    student = ["a", "b", "ab", "c"]
    teacher = ["abc", "a", "b", "x", "ab"]
    s_key, t_key = vocab_keys(student, teacher)
    # shared strings a, b, ab (student ids 0, 1, 2); "c" and "x" start with none of them
    assert s_key.tolist() == [0, 1, 2, -1]
    assert t_key.tolist() == [2, 0, 1, -1, 2]
    with pytest.raises(DistillError, match="share no token string"):
        vocab_keys(["a"], ["b"])


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def test_character_student_is_scored_on_the_teachers_next_character():
    # teacher tokens a, ab, b, ba, z; student characters a, b, z: the teacher's next-character
    # distribution is P(a) = p(a) + p(ab), P(b) = p(b) + p(ba), P(z) = p(z)
    teacher_p = torch.tensor([0.1, 0.3, 0.2, 0.15, 0.25])
    student_p = torch.tensor([0.5, 0.3, 0.2])
    s_key, t_key = vocab_keys(["a", "b", "z"], ["a", "ab", "b", "ba", "z"])
    value = aligned_kl(
        student_p.log().view(1, 1, 3),
        teacher_p.log().view(1, 1, 5),
        labels=torch.tensor([[0]]),
        teacher_position=torch.tensor([[0]]),
        student_vocab_key=s_key,
        teacher_vocab_key=t_key,
    )
    assert float(value) == pytest.approx(_kl([0.4, 0.35, 0.25], [0.5, 0.3, 0.2]), rel=1e-5)


def test_unshared_mass_is_left_to_uld():
    # student a, b, q; teacher a, b, x, y: q, x and y share nothing
    s_key, t_key = vocab_keys(["a", "b", "q"], ["a", "b", "x", "y"])
    student_p, teacher_p = [0.5, 0.2, 0.3], [0.4, 0.4, 0.15, 0.05]
    args = dict(
        labels=torch.tensor([[1]]),
        teacher_position=torch.tensor([[0]]),
        student_vocab_key=s_key,
        teacher_vocab_key=t_key,
    )
    s = torch.tensor(student_p).log().view(1, 1, 3)
    t = torch.tensor(teacher_p).log().view(1, 1, 4)
    kl = _kl(
        [0.5, 0.5], [0.5 / 0.7, 0.2 / 0.7]
    )  # over a and b, given the next token is one of them
    uld = abs(0.3 - 0.15) + abs(0.0 - 0.05)
    assert float(aligned_kl(s, t, **args)) == pytest.approx(kl + uld, rel=1e-5)
    assert float(aligned_kl(s, t, uld_weight=0.0, **args)) == pytest.approx(kl, rel=1e-5)


def test_one_tokenizer_on_both_sides_is_the_plain_forward_kl():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(3, 7, 11, generator=g, requires_grad=True)
    teacher = 3 * torch.randn(3, 7, 11, generator=g)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[0, 4:] = -100
    labels[2] = -100
    identity = torch.arange(11)
    value = aligned_kl(
        student, teacher, labels, torch.arange(7).expand(3, 7), identity, identity, temperature=2.0
    )
    plain = forward_kl(student, teacher, labels, temperature=2.0)
    torch.testing.assert_close(value, plain, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(value, student)
    (plain_grad,) = torch.autograd.grad(plain, student)
    torch.testing.assert_close(grad, plain_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("case", ["no aligned position", "every target ignored"])
def test_an_empty_alignment_is_zero_with_zero_gradients(case: str):
    student = torch.randn(2, 5, 4, requires_grad=True)
    labels = torch.zeros(2, 5, dtype=torch.int64)
    position = torch.arange(5).expand(2, 5)
    if case == "no aligned position":
        position = torch.full((2, 5), -1)
    else:
        labels = torch.full((2, 5), -100)
    value = aligned_kl(student, torch.randn(2, 5, 6), labels, position, torch.arange(4),
                       torch.tensor([0, 1, 2, 3, -1, -1]))  # fmt: skip
    value.backward()
    assert float(value.detach()) == 0.0 and student.grad is not None and not student.grad.any()


def test_teacher_positions_past_its_logits_are_not_read():
    # the teacher's last token is no input: a position naming it is skipped, not an index error
    student, teacher = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    labels = torch.zeros(1, 3, dtype=torch.int64)
    key = torch.arange(4)
    far = aligned_kl(student, teacher, labels, torch.tensor([[0, 3, 9]]), key, key)
    near = aligned_kl(student, teacher, labels, torch.tensor([[0, -1, -1]]), key, key)
    torch.testing.assert_close(far, near)


def test_bad_options_and_shapes_are_one_line():
    with pytest.raises(DistillError, match="uld_weight=-1"):
        build_loss("aligned_kl", uld_weight=-1)
    with pytest.raises(DistillError, match="must both be"):
        aligned_kl(torch.randn(1, 3, 4), torch.randn(1, 3, 4), torch.zeros(1, 3, dtype=torch.int64),
                   torch.zeros(1, 2, dtype=torch.int64), torch.arange(4), torch.arange(4))  # fmt: skip


def _texts(tokenizer, ids) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def test_character_student_and_bpe_teacher_rows_align_on_equal_text(tmp_path: Path):
    pytest.importorskip("tokenizers")
    root = corpus(tmp_path / "corpus")
    data = build_dataset("shakespeare", split="train", root=str(root), block_size=24,
                         tokenizer="char", teacher_tokenizer="bpe", vocab_size=300)  # fmt: skip
    position, s_key, t_key = data.alignment
    assert 0.2 < (position >= 0).float().mean() < 1.0  # BPE tokens are longer than characters
    for row in (0, 5, len(data) - 1):
        student = _texts(data.tokenizer, data.input_ids[row].tolist())
        teacher = _texts(data.teacher_tokenizer, data.teacher_input_ids[row].tolist())
        for j, i in enumerate(position[row].tolist()):
            read = "".join(student[: j + 1])
            ends = ["".join(teacher[: k + 1]) for k in range(len(teacher))]
            assert (ends[i] == read) if i >= 0 else (read not in ends)
    # a BPE token is keyed by its first character, the student's id of it
    texts = data.teacher_tokenizer.token_texts()
    for t, key in enumerate(t_key.tolist()):
        if texts[t][:1] in data.tokenizer.ids:
            assert key == data.tokenizer.ids[texts[t][0]]
    assert s_key.tolist() == list(range(data.num_classes))
    batch = build_task("causal_lm").split(data.batch(torch.tensor([0, 1])))
    assert batch.extras["teacher_position"].shape == batch.targets.shape
    assert torch.equal(batch.extras["teacher_vocab_key"], t_key)


def test_one_tokenizer_pairs_align_every_position_to_itself(tmp_path: Path):
    root = corpus(tmp_path / "corpus")
    data = build_dataset("shakespeare", split="test", root=str(root), block_size=16,
                         tokenizer="char", teacher_tokenizer="char")  # fmt: skip
    position, s_key, t_key = data.alignment
    assert torch.equal(position, torch.arange(17).expand_as(position))
    assert torch.equal(s_key, t_key) and torch.equal(s_key, torch.arange(data.num_classes))
    kept = data.subset(3, seed=1)
    assert torch.equal(kept.alignment[0], torch.arange(17).expand(3, 17))


TINY = ["data.options.block_size=16", "data.train_subset=8", "data.test_subset=4",
        "train.batch_size=4", "train.eval_batch_size=4", "train.progress=false", "train.log_every=1"]  # fmt: skip
SMALL = ["n_layer=1", "n_head=2", "n_embd=16"]


def test_bpe_teacher_distils_into_character_student_with_aligned_kl(tmp_path: Path, capsys):
    pytest.importorskip("tokenizers")
    root = corpus(tmp_path / "corpus")
    args = [f"data.root={root}", *TINY, "data.options.vocab_size=300"]
    teacher = tmp_path / "teacher"
    code = main(["train", "shakespeare/teacher_bpe", *args, "student.name=gpt",
                 *(f"student.options.{o}" for o in SMALL), f"output={teacher}"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    student = tmp_path / "aligned"
    code = main(["train", "shakespeare/aligned_kl", *args, f"teacher.weights={teacher}",
                 "teacher.name=gpt", *(f"teacher.options.{o}" for o in SMALL),
                 f"output={student}"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    logged = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert len(steps) == 2 and all(r["aligned_kl"] > 0 for r in steps)
    summary = json.loads((student / "summary.json").read_text())
    assert "bpc" in summary["last"] and "agreement" not in summary["last"]


@pytest.mark.parametrize("loss", ["aligned_kl", "marginal_kl"])
def test_aligned_kl_without_paired_data_is_one_line_before_training(
    loss: str, tmp_path: Path, capsys
):
    root = corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    code = main(["train", "shakespeare/kd", f"data.root={root}", *TINY, "teacher.weights=null",
                 f"distill.terms.0.loss={loss}", f"output={run}"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"distill.terms.0 ({loss})" in err[0] and "teacher_tokenizer" in err[0]
    assert not run.exists()
