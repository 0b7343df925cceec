"""Token masking for text batches: what it touches, that teacher and student read the same masked batch,
resume determinism through the step-seeded generator, and the option on the wrong kind of data."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from text_helpers import save_tiny_bert, tiny_tokenizer, write_reviews
from torch.utils.data import TensorDataset

from distill.config.build import build
from distill.config.schema import Recipe
from distill.data.augment import BatchAugment, TokenMask, build_augment
from distill.data.text import TextDataset
from distill.errors import DistillError

PAD, CLS, SEP, MASK = 0, 2, 3, 99


def _batch(rows: int = 64, length: int = 40, real: int = 30) -> dict[str, torch.Tensor]:
    ids = torch.randint(4, 50, (rows, length))
    ids[:, 0], ids[:, real - 1], ids[:, real:] = CLS, SEP, PAD
    attention = torch.zeros(rows, length, dtype=torch.int64)
    attention[:, :real] = 1
    return {"input_ids": ids, "attention_mask": attention}


def test_masks_only_real_ordinary_tokens_at_about_the_rate() -> None:
    batch = _batch()
    out = TokenMask(0.25, MASK, [PAD, CLS, SEP])(batch, torch.Generator().manual_seed(0))
    masked = out["input_ids"] == MASK
    assert not masked[:, 0].any() and not masked[:, 29:].any()  # [CLS], [SEP], padding untouched
    changed = out["input_ids"] != batch["input_ids"]
    assert torch.equal(changed, masked)  # tokens are only ever replaced by the mask id
    rate = masked[:, 1:29].float().mean().item()
    assert 0.21 < rate < 0.29, rate  # 64 x 28 draws at p = 0.25
    assert torch.equal(out["attention_mask"], batch["attention_mask"])
    assert batch["input_ids"].ne(MASK).all()  # the caller's batch is not modified


def test_same_generator_seed_same_mask_and_zero_is_identity() -> None:
    batch = _batch()
    first = TokenMask(0.3, MASK, [PAD, CLS, SEP])(batch, torch.Generator().manual_seed(7))
    again = TokenMask(0.3, MASK, [PAD, CLS, SEP])(batch, torch.Generator().manual_seed(7))
    other = TokenMask(0.3, MASK, [PAD, CLS, SEP])(batch, torch.Generator().manual_seed(8))
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert not torch.equal(first["input_ids"], other["input_ids"])
    assert not TokenMask(0.0, MASK).enabled
    with pytest.raises(DistillError, match=r"token_mask must be in \[0, 1\), got 1.5"):
        TokenMask(1.5, MASK)


def _spec(**kw) -> SimpleNamespace:
    return SimpleNamespace(**{"crop_padding": 0, "flip": False, "token_mask": 0.0, **kw})


def test_options_for_the_other_kind_of_data_are_refused() -> None:
    text = TextDataset(["a good film"], [0], ["neg", "pos"], name="reviews")
    images = TensorDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(
        DistillError, match="crop_padding/flip augment images but dataset 'reviews'"
    ):
        build_augment(_spec(flip=True), text)
    with pytest.raises(DistillError, match=r"token_mask=0.1 masks tokens .* holds no text"):
        build_augment(_spec(token_mask=0.1), images)
    text.set_tokenizer(tiny_tokenizer())  # no [MASK] token
    with pytest.raises(DistillError, match="tokenizer has no mask token; set token_mask: 0"):
        build_augment(_spec(token_mask=0.1), text)
    assert build_augment(_spec(), text) is None and build_augment(_spec(), images) is None
    assert isinstance(build_augment(_spec(flip=True), images), BatchAugment)
    text.set_tokenizer(tiny_tokenizer(mask=True))
    augment = build_augment(_spec(token_mask=0.1), text)
    assert isinstance(augment, TokenMask) and augment.mask_id == len(text.tokenizer) - 1
    assert {0, 2, 3} <= set(augment.special_ids)


def test_teacher_and_student_read_the_same_masked_batch(tmp_path: Path) -> None:
    teacher_dir = save_tiny_bert(tmp_path / "teacher", tokenizer=tiny_tokenizer(mask=True))
    recipe = Recipe.model_validate({
        "name": "masked",
        "task": "text_classification",
        "data": {"name": "text_file", "root": str(write_reviews(tmp_path / "reviews")),
                 "options": {"max_length": 16}, "augment": {"token_mask": 0.5}},
        "teacher": {"name": f"hf:{teacher_dir}"},
        "student": {"name": "from_teacher", "options": {"layers": [0, 2]}},
        "distill": {"task_weight": 0.5, "terms": [{"loss": "kd", "weight": 0.5}]},
        "train": {"epochs": 1, "batch_size": 8, "optimizer": "adamw", "lr": 1e-3,
                  "progress": False, "device": "cpu"},
        "output": str(tmp_path / "run"),
    })  # fmt: skip
    built = build(recipe)
    assert isinstance(built.augment, TokenMask)
    mask_id = built.augment.mask_id
    seen: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    for who, model in (("student", built.student), ("teacher", built.teacher)):
        model.register_forward_pre_hook(
            lambda _m, _a, kw, who=who: seen[who].append(kw["input_ids"].clone()),
            with_kwargs=True,
        )
    from distill.config.build import make_trainer

    make_trainer(built).fit()
    student, teacher = seen["student"], seen["teacher"]
    assert len(student) == len(teacher) and all(map(torch.equal, student, teacher))
    masked = [int((ids == mask_id).sum()) for ids in student]
    assert sum(n > 0 for n in masked) == 3  # every training step (24 rows, batch 8), masked
    assert len(student[-1]) == 12 and masked[-1] == 0  # the evaluation of the 12 test rows is not
