"""Students cut from a Hugging Face teacher, the hf: adapter, layer maps and vocabulary checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from text_helpers import WORDS, save_tiny_bert, tiny_bert, tiny_tokenizer

from distill.errors import DistillError
from distill.models import build_model
from distill.models.hf import (
    layer_map,
    pick_layers,
    same_vocabulary,
    student_from_teacher,
    tokenizer_of,
)


def _inputs(model) -> dict[str, torch.Tensor]:
    return dict(
        tokenizer_of(model)(["the film was good", "bad"], padding=True, return_tensors="pt")
    )


def test_keeping_every_layer_reproduces_the_teacher() -> None:
    teacher = tiny_bert(layers=3).eval()
    student = student_from_teacher(teacher, layers=[0, 1, 2]).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            student(**_inputs(teacher)).logits, teacher(**_inputs(teacher)).logits
        )


def test_layer_subset_copies_embeddings_chosen_layers_and_head() -> None:
    teacher = tiny_bert(layers=3)
    student = student_from_teacher(teacher, layers=[2, 0])
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    assert teacher.config.num_hidden_layers == 3  # the teacher is untouched
    for mine, theirs in ((student.bert.encoder.layer[0], teacher.bert.encoder.layer[2]),
                         (student.bert.encoder.layer[1], teacher.bert.encoder.layer[0]),
                         (student.bert.embeddings, teacher.bert.embeddings),
                         (student.classifier, teacher.classifier)):  # fmt: skip
        for a, b in zip(mine.state_dict().values(), theirs.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b)
    assert student.bert.encoder.layer[0].attention.self.query.weight is not (
        teacher.bert.encoder.layer[2].attention.self.query.weight
    )  # a copy: training the student leaves the teacher alone
    assert tokenizer_of(student) is tokenizer_of(teacher)
    assert student(**_inputs(student)).logits.shape == (2, 2)


@pytest.mark.parametrize(
    ("total", "k", "expected"),
    [(6, 2, [0, 3]), (12, 6, [0, 2, 4, 6, 8, 10]), (6, 6, list(range(6))), (3, 1, [0])],
)
def test_uniform_picks_evenly_from_the_first_layer(total: int, k: int, expected: list[int]) -> None:
    assert pick_layers(total, None, k) == expected


def test_bad_layer_choices_name_the_teacher_depth() -> None:
    teacher = tiny_bert(layers=3)
    with pytest.raises(
        DistillError, match=r"layer 3 is out of range; the teacher has 3 layers, numbered 0..2"
    ):
        student_from_teacher(teacher, layers=[0, 3])
    with pytest.raises(DistillError, match=r"uniform=4 is out of range; the teacher has 3 layers"):
        student_from_teacher(teacher, uniform=4)
    with pytest.raises(DistillError, match="exactly one of layers"):
        student_from_teacher(teacher, layers=[0], uniform=1)
    with pytest.raises(DistillError, match="needs a Hugging Face teacher"):
        student_from_teacher(torch.nn.Linear(2, 2), uniform=1)


def test_narrow_student_has_its_own_width() -> None:
    teacher = tiny_bert(layers=3, hidden=16)  # 2 heads of size 8
    student = student_from_teacher(teacher, uniform=2, hidden_size=8)
    out = student(**_inputs(teacher), output_hidden_states=True)
    assert student.config.num_attention_heads == 1 and student.config.intermediate_size == 16
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape[-1] == 8
    with pytest.raises(DistillError, match="multiple of the teacher's attention head size 8"):
        student_from_teacher(teacher, uniform=2, hidden_size=12)


def test_layer_map() -> None:
    assert layer_map(2, 6, "uniform") == [
        3,
        6,
    ]  # PKD-skip / DistilBERT spacing, ending at the top layer
    assert layer_map(3, 12, "uniform") == [4, 8, 12]
    assert layer_map(2, 6, "last") == [5, 6]
    assert layer_map(2, 6, [1, 4]) == [1, 4]
    assert layer_map(6, 6, "uniform") == layer_map(6, 6, "last") == [1, 2, 3, 4, 5, 6]
    with pytest.raises(
        DistillError, match="one teacher layer in 1..6 for each of the student's 2 layers"
    ):
        layer_map(2, 6, [1, 7])
    with pytest.raises(DistillError, match="no deeper than its teacher"):
        layer_map(4, 3)
    with pytest.raises(DistillError, match="use uniform, last or a list"):
        layer_map(2, 6, "skip")


def test_hf_adapter_loads_a_local_folder(tmp_path: Path) -> None:
    folder = save_tiny_bert(tmp_path / "tiny", num_labels=3)
    model = build_model(f"hf:{folder}", num_classes=3)
    reference = tiny_bert(num_labels=3)
    torch.testing.assert_close(
        model.bert.embeddings.word_embeddings.weight,
        reference.bert.embeddings.word_embeddings.weight,
    )
    assert tokenizer_of(model).get_vocab() == tiny_tokenizer().get_vocab()
    fresh = build_model(f"hf:{folder}", num_classes=3, pretrained=False, hidden_dropout_prob=0.0)
    assert fresh.config.hidden_dropout_prob == 0.0
    assert not torch.equal(
        fresh.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight
    )


def test_hf_adapter_errors(tmp_path: Path) -> None:
    folder = save_tiny_bert(tmp_path / "tiny", num_labels=3)  # a trained 3-label head
    with pytest.raises(DistillError, match=r"head for 3 labels .* but the data has 2 classes"):
        build_model(f"hf:{folder}", num_classes=2)
    with pytest.raises(DistillError, match="unknown config option 'hiden_size'"):
        build_model(f"hf:{folder}", num_classes=3, hiden_size=8)
    # a local path that does not exist is named as such (not as a hub id that failed to load)
    with pytest.raises(DistillError, match=r"there is no folder .*missing; fix the path"):
        build_model(f"hf:{tmp_path / 'missing'}", num_classes=2)


def test_same_vocabulary() -> None:
    teacher = tiny_bert()
    assert same_vocabulary(student_from_teacher(teacher, uniform=1), teacher)
    assert same_vocabulary(
        tiny_bert(tokenizer=tiny_tokenizer()), teacher
    )  # equal vocab, other object
    other = tiny_bert(tokenizer=tiny_tokenizer([*WORDS[::-1]]))
    assert not same_vocabulary(other, teacher)
    assert same_vocabulary(torch.nn.Linear(2, 2), teacher)  # no tokenizer: reads the teacher's ids


def test_layer_subset_student_shares_its_own_config() -> None:
    """The kept layers read the student's config, not a copy of the teacher's: switching the student to eager
    attention (what the text task does when a term taps ``@attentions.N``) reaches every layer, and the
    teacher keeps its own attention implementation."""
    teacher = tiny_bert(layers=4)
    teacher.set_attn_implementation("sdpa")
    student = student_from_teacher(teacher, layers=[1, 3])
    configs = {id(m.config) for m in student.modules() if hasattr(m, "config")}
    assert configs == {id(student.config)}
    student.set_attn_implementation("eager")
    ids = torch.tensor([[2, 5, 6, 3]])
    out = student(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True)
    assert len(out.attentions) == 2 and all(a is not None for a in out.attentions)
    assert teacher.config._attn_implementation == "sdpa"
