"""``train.group_by_length`` on text: the lengths it groups by are the loader's, a text run trains on
batches with less padding, and a run stopped mid-epoch resumes bit-exactly."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from text_helpers import WORDS, save_tiny_bert, tiny_tokenizer

from distill.config.build import build, make_trainer
from distill.config.schema import Recipe
from distill.data.text import TextDataset


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 14))) for _ in range(n)]


def test_lengths_are_the_tokens_the_loader_keeps() -> None:
    texts = _texts(30)
    data = TextDataset(texts, [i % 2 for i in range(30)], ["neg", "pos"], max_length=10)
    data.set_tokenizer(tiny_tokenizer())
    batch = data.collate([data[i] for i in range(30)])
    assert data.lengths() == batch["attention_mask"].sum(1).tolist()  # [CLS], [SEP], truncation
    assert max(data.lengths()) == 10 and min(data.lengths()) == 3
    data.set_tokenizer(tiny_tokenizer(), max_length=6)  # a new tokenizer/length: counted again
    assert max(data.lengths()) == 6


def _reviews(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 64), ("test", 16)):
        texts = _texts(n, seed=len(split))
        rows = [f"{t},{'pos' if 'good' in t or 'great' in t else 'neg'}" for t in texts]
        (folder / f"{split}.csv").write_text("\n".join(["text,label", *rows]) + "\n")
    return folder


def _built(tmp_path: Path, run: str, group: bool = True):
    recipe = Recipe.model_validate({
        "name": "grouped",
        "task": "text_classification",
        "data": {"name": "text_file", "root": str(_reviews(tmp_path / "reviews")),
                 "options": {"max_length": 24}},
        "teacher": {"name": f"hf:{save_tiny_bert(tmp_path / 'teacher')}"},
        "student": {"name": "from_teacher", "options": {"layers": [0, 2]}},
        "distill": {"task_weight": 0.5, "terms": [{"loss": "kd", "weight": 0.5}]},
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 4, "optimizer": "adamw", "lr": 1e-3, "seed": 3,
                  "group_by_length": group, "checkpoint_every": 1, "progress": False,
                  "device": "cpu"},
        "output": str(tmp_path / run),
    })  # fmt: skip
    return build(recipe)


def _padding_seen(built) -> list[float]:
    shares: list[float] = []
    built.student.register_forward_pre_hook(
        lambda _m, _a, kw: shares.append(1 - kw["attention_mask"].float().mean().item()),
        with_kwargs=True,
    )
    return shares


def test_text_run_trains_and_evaluates_on_batches_with_less_padding(tmp_path: Path) -> None:
    train, evaluation = {}, {}
    for group in (False, True):
        built = _built(tmp_path, f"run-{group}", group)
        shares = _padding_seen(built)
        make_trainer(built).fit()
        # one shape check before training, then per epoch 8 training steps and 4 evaluation batches
        assert len(shares) == 1 + 2 * (8 + 4)
        train[group] = sum(shares[1:9]) / 8
        evaluation[group] = sum(shares[9:13]) / 4
    assert train[True] < 0.5 * train[False], train
    assert evaluation[True] < 0.5 * evaluation[False], evaluation


def test_stopped_mid_epoch_resumes_bit_exactly(tmp_path: Path) -> None:
    full = _built(tmp_path, "full")
    make_trainer(full).fit()
    stopped = _built(tmp_path, "stopped")
    make_trainer(stopped).fit(stop_after=11)  # epoch 2, step 3 of 8
    resumed = _built(tmp_path, "stopped")
    make_trainer(resumed).fit(resume=True)
    a, b = full.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = _built(tmp_path, "plain", group=False)  # sanity: the order changes the weights
    make_trainer(other).fit()
    assert not all(torch.equal(a[k], other.student.state_dict()[k]) for k in a)
