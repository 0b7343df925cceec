"""seq_kd with a teacher of another tokenizer: the student's prompt crosses over as text, the teacher
samples its own tokens, and the student trains on their text in its own tokens (docs/lm.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.cli import main
from distill.config.build import build_dataset
from distill.distiller import OnlineTeacher
from distill.errors import DistillError
from distill.lm_modes import DataModes, ModeSettings
from distill.tasks.causal_lm import CausalLMTask
from helpers.tiny_lm import TinyLM
from lm.lm_helpers import corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPT = 6


class RecordingLM(TinyLM):
    """A TinyLM that keeps every ``generate`` call's prompt and output."""

    def __init__(self, vocab: int) -> None:
        super().__init__(vocab, seed=1)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def generate(self, ids, max_new_tokens, temperature=1.0):
        out = super().generate(ids, max_new_tokens, temperature)
        self.calls.append((ids.clone(), out.clone()))
        return out


def paired(tmp_path: Path):
    pytest.importorskip("tokenizers")
    root = corpus(tmp_path / "corpus")
    return build_dataset("shakespeare", split="train", root=str(root), block_size=24,
                         tokenizer="char", teacher_tokenizer="bpe", vocab_size=300)  # fmt: skip


def seq_kd(teacher, seed: int = 3) -> DataModes:
    task = CausalLMTask()
    settings = ModeSettings("seq_kd", prompt_tokens=PROMPT, seed=seed)
    return DataModes(OnlineTeacher(teacher, task), teacher, task, settings)


def test_the_character_student_learns_the_bpe_teachers_text(tmp_path: Path) -> None:
    data = paired(tmp_path).subset(10, seed=0)
    char, bpe = data.tokenizer, data.teacher_tokenizer
    teacher = RecordingLM(data.teacher_num_classes)
    source = seq_kd(teacher)
    source.prepare(data, 4, None, True)
    assert sorted(source.completions) == list(range(10)) and teacher.calls
    written: dict[str, str] = {}  # the prompt's text -> the teacher's continuation's text
    for prompts, out in teacher.calls:
        for prompt, row in zip(prompts.tolist(), out.tolist(), strict=True):
            text = bpe.decode(prompt)
            assert bpe.encode(text) == prompt  # the prompt crossed over as text
            written[text] = bpe.decode(row[len(prompt) :])
    for i in range(10):
        row = source.completions[i]
        assert torch.equal(row[:PROMPT], data.input_ids[i, :PROMPT])  # the student's own prompt
        kept = row[PROMPT:][row[PROMPT:] != -100]
        assert len(kept) > 0
        continuation = written[char.decode(data.input_ids[i, :PROMPT].tolist())]
        # the labels are the teacher's text in the student's characters (its unknown ones dropped)
        known = "".join(c for c in continuation if c in char.ids)
        assert known.startswith(char.decode(kept.tolist()))
    batch, metrics = source.batch(CausalLMTask().split(data.batch(torch.tensor([3, 7]))), None, 0)
    assert metrics["mode_teacher"] == 1.0
    assert torch.equal(batch.targets, batch.extras["labels"])
    ids = source.completions[3]
    assert torch.equal(
        batch.targets[0, PROMPT - 1 :][ids[PROMPT:] != -100], ids[PROMPT:][ids[PROMPT:] != -100]
    )
    assert "teacher_inputs" not in batch.extras  # the student's text only: no teacher ids to score


def test_completions_are_the_same_from_the_same_seed(tmp_path: Path) -> None:
    data = paired(tmp_path).subset(8, seed=1)
    runs = []
    for seed in (3, 3, 4):
        source = seq_kd(TinyLM(data.teacher_num_classes, seed=1), seed=seed)
        source.prepare(data, 3, None, True)
        runs.append(torch.stack([source.completions[i] for i in range(8)]))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_a_short_continuation_is_padded_and_masked(tmp_path: Path) -> None:
    data = paired(tmp_path).subset(4, seed=2)
    source = seq_kd(TinyLM(data.teacher_num_classes, seed=1))
    source.prepare(data, 4, None, True)
    source.completions[1] = torch.cat([source.completions[1][:10], torch.full((15,), -100)])
    batch, _ = source.batch(CausalLMTask().split(data.batch(torch.tensor([0, 1]))), None, 0)
    mask = batch.inputs["attention_mask"]
    assert mask[1, :10].all() and not mask[1, 10:].any()
    for k, i in enumerate((0, 1)):
        assert torch.equal(mask[k].bool(), (source.completions[i] != -100)[:-1])
    assert bool((batch.targets[1, 9:] == -100).all()) and bool(
        (batch.inputs["input_ids"] >= 0).all()
    )


class NoDecode:
    vocab_size = 5

    def encode(self, text: str) -> list[int]:
        return [0] * len(text)


def test_a_tokenizer_without_decode_is_one_line(tmp_path: Path) -> None:
    data = paired(tmp_path).subset(4, seed=0)
    data.teacher_tokenizer = NoDecode()
    source = seq_kd(TinyLM(300, seed=1))
    with pytest.raises(DistillError) as err:
        source.prepare(data, 4, None, True)
    message = str(err.value)
    assert "\n" not in message and "teacher tokenizer NoDecode has no decode()" in message


def test_terms_with_seq_kd_across_tokenizers_are_one_line(tmp_path: Path, capsys) -> None:
    root = corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    code = main(["train", "shakespeare/seq_kd_bpe", f"data.root={root}", "teacher.weights=null",
                 "distill.terms=[{loss: forward_kl}]", f"output={run}"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "remove distill.terms" in err[0] and not run.exists()


def test_the_seq_kd_bpe_recipe_trains_the_character_student(tmp_path: Path, capsys) -> None:
    pytest.importorskip("tokenizers")
    root = corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    code = main(["train", "shakespeare/seq_kd_bpe", f"data.root={root}", "teacher.weights=null",
                 "data.options.vocab_size=300", "data.options.block_size=16", "data.train_subset=8",
                 "data.test_subset=4", "train.batch_size=4", "train.eval_batch_size=4",
                 "train.progress=false", "distill.data_mode.prompt_tokens=6",
                 *(f"teacher.options.{o}" for o in ("n_layer=1", "n_head=2", "n_embd=16")),
                 "teacher.name=gpt", f"output={run}"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = (run / "summary.json").read_text()
    assert '"bpc"' in summary and '"steps": 2' in summary
