"""distill.data_mode: the mode of a step is a function of (seed, step), an on-policy step trains on the
student's own sample scored by the teacher, seq_kd on the teacher's completions, replay on a buffer,
and a run with generated steps resumes exactly."""

import io
import json

import pytest
import torch
from rich.console import Console
from torch.utils.data import default_collate

from distill.distiller import Distiller, OnlineTeacher, Term
from distill.errors import DistillError
from distill.lm_modes import DataModes, ModeSettings, sample_tokens
from distill.tasks.causal_lm import CausalLMTask
from distill.train import TrainConfig, Trainer
from helpers.tiny_lm import TinyLM, TokenData, TokenKL

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VOCAB = 11


def modes(mode="on_policy", teacher=None, **settings):
    teacher = teacher or TinyLM(VOCAB, seed=1)
    task = CausalLMTask()
    options = {"mode": mode, "prompt_tokens": 3, **settings}
    return DataModes(OnlineTeacher(teacher, task), teacher, task, ModeSettings(**options))


def first_batch(data, rows=(0, 1, 2, 3)):
    return CausalLMTask().split(default_collate([data[i] for i in rows]))


def test_the_mode_is_a_function_of_seed_and_step() -> None:
    a, b = modes(lam=0.5, seed=4), modes(lam=0.5, seed=4)
    picks = [a.choose(s) for s in range(400)]
    assert picks == [b.choose(s) for s in range(400)]
    assert picks[::-1] == [
        b.choose(s) for s in reversed(range(400))
    ]  # order of asking is irrelevant
    assert 0.4 < picks.count("student") / 400 < 0.6 and set(picks) == {"student", "dataset"}
    assert picks != [modes(lam=0.5, seed=5).choose(s) for s in range(400)]
    assert {modes(lam=0.0).choose(s) for s in range(50)} == {"dataset"}
    assert {modes(lam=1.0).choose(s) for s in range(50)} == {"student"}
    assert {modes("teacher_forced").choose(s) for s in range(5)} == {"dataset"}


def test_an_on_policy_step_trains_on_the_students_sample_scored_by_the_teacher() -> None:
    data = TokenData(n=8, length=9)
    teacher, student = TinyLM(VOCAB, seed=1), TinyLM(VOCAB, seed=5)
    source = modes(teacher=teacher, lam=1.0)
    distiller = Distiller(
        student, CausalLMTask(), terms=[Term(TokenKL(), name="kl")], task_weight=0.0, source=source
    )
    given = first_batch(data)
    torch.manual_seed(0)
    step = distiller(given, step=7)
    sample = step.batch
    assert (
        sample is not None and sample.inputs["input_ids"].shape == given.inputs["input_ids"].shape
    )
    ids = sample.inputs["input_ids"]
    assert torch.equal(ids[:, :3], given.inputs["input_ids"][:, :3])  # the prompt is the data's
    assert not torch.equal(ids, given.inputs["input_ids"])  # the rest is the student's
    labels = sample.extras["labels"]
    assert bool((labels[:, :2] == -100).all())  # rows 0..1 predict prompt tokens: not scored
    assert torch.equal(labels[:, 2:-1], ids[:, 3:])  # row j predicts the sampled token j + 1
    assert bool((sample.targets == -100).all())  # the task loss never trains on the own sample
    assert step.metrics["mode_student"] == 1.0 and step.metrics["mode_dataset"] == 0.0
    assert step.metrics["generate_s"] > 0
    with torch.no_grad():  # the teacher scored exactly the sample
        expected = TokenKL()(student(ids), teacher(ids), labels)
    assert step.parts["kl"].item() == pytest.approx(expected.item(), rel=1e-5)
    step.loss.backward()
    assert student.head.weight.grad is not None and student.head.weight.grad.abs().sum() > 0


def test_sampling_temperature_is_the_samplers_own() -> None:
    model = TinyLM(VOCAB, seed=2)
    prompt = torch.randint(0, VOCAB, (4, 3), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    cold = sample_tokens(model, prompt, 5, temperature=1e-4)
    torch.manual_seed(2)
    assert torch.equal(cold, sample_tokens(model, prompt, 5, temperature=1e-4))  # argmax
    torch.manual_seed(1)
    hot = [sample_tokens(model, prompt, 5, temperature=50.0) for _ in range(3)]
    assert any(not torch.equal(cold, h) for h in hot)


def test_a_hugging_face_student_samples_exactly_the_rest_of_the_row() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
        eos_token_id=None, bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    prompt = torch.randint(0, VOCAB, (2, 3))
    out = sample_tokens(model, prompt, 6, temperature=1.0)
    assert out.shape == (2, 9) and torch.equal(out[:, :3], prompt)


def test_seq_kd_trains_on_the_teachers_completions_made_once() -> None:
    data = TokenData(n=6, length=8)
    source = modes("seq_kd", seed=3)
    source.prepare(data, 4, None, True)
    assert sorted(source.completions) == list(range(6))
    again = modes("seq_kd", seed=3)
    again.prepare(data, 4, None, True)
    assert all(torch.equal(source.completions[i], again.completions[i]) for i in range(6))
    batch, metrics = source.batch(first_batch(data, (4, 1)), TinyLM(VOCAB), step=0)
    assert metrics["mode_teacher"] == 1.0
    assert torch.equal(batch.inputs["input_ids"][0], source.completions[4][:-1])
    assert torch.equal(batch.inputs["input_ids"][:, :3], data.ids[[4, 1], :3])
    assert torch.equal(batch.targets, batch.extras["labels"])  # seq_kd: NLL on the completions
    assert bool((batch.targets[:, :2] == -100).all() and (batch.targets[:, 2:] >= 0).all())


def test_replay_reuses_the_students_earlier_samples() -> None:
    data = TokenData(n=8, length=9)
    source = modes("replay", lam=1.0, replay_ratio=1.0, replay_size=6)
    student = TinyLM(VOCAB, seed=5)
    assert source.choose(0) == "student"
    fresh, _ = source.batch(first_batch(data), student, step=0)
    assert len(source.buffer) == 4 and source.choose(1) == "replay"
    replayed, metrics = source.batch(first_batch(data), student, step=1)
    assert metrics["mode_replay"] == 1.0 and metrics["generate_s"] == 0.0
    kept = {tuple(row.tolist()) for row in source.buffer}
    rows = torch.cat([replayed.inputs["input_ids"], replayed.extras["labels"][:, -1:]], 1)
    assert all(tuple(r.tolist()) in kept for r in rows)
    source._remember(torch.zeros(4, 9, dtype=torch.long))  # 4 more: the buffer keeps the newest 6
    assert len(source.buffer) == 6 and all(row.sum() == 0 for row in source.buffer[-4:])


def test_a_prompt_as_long_as_the_row_is_refused() -> None:
    source = modes(prompt_tokens=9)
    with pytest.raises(DistillError, match="prompt_tokens 9 leaves nothing to sample"):
        source.batch(first_batch(TokenData(n=4, length=9)), TinyLM(VOCAB), step=0)


def train(tmp_path, name, stop_after=None, resume=False):
    data = TokenData(n=16, length=9)
    config = TrainConfig(
        epochs=2, batch_size=4, lr=0.05, progress=False, device="cpu", seed=3,
        checkpoint_every=1, log_every=1,
    )  # fmt: skip
    source = modes(lam=0.5, seed=3)
    distiller = Distiller(
        TinyLM(VOCAB, seed=5), CausalLMTask(), terms=[Term(TokenKL(), name="kl")], source=source
    )
    trainer = Trainer(
        distiller, data, None, config, tmp_path / name, console=Console(file=io.StringIO())
    )
    trainer.fit(resume=resume, stop_after=stop_after)
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
    return [r for r in rows if "kl" in r]


def test_a_run_with_on_policy_steps_logs_its_modes_and_resumes_exactly(tmp_path) -> None:
    whole = train(tmp_path, "whole")
    assert len(whole) == 8
    taken = [r["mode_student"] for r in whole]
    assert set(taken) == {0.0, 1.0}  # both kinds of step in 8 steps at lam = 0.5 (seed 3)
    assert all(r["step_s"] >= r["generate_s"] >= 0 for r in whole)
    train(tmp_path, "parts", stop_after=3)
    resumed = train(tmp_path, "parts", resume=True)
    keys = ("step", "loss", "kl", "mode_student")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in whole]
