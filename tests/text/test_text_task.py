"""The text-classification task: named outputs, attentions on request, loss, macro-F1 and evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from text_helpers import tiny_bert, tiny_tokenizer

from distill import Distiller, KDLoss, Term
from distill.data.text import TextDataset
from distill.errors import DistillError
from distill.taps import FeatureTaps
from distill.tasks import TASKS, build_task
from distill.tasks.text import TextClassificationTask, macro_f1

TEXTS = ["the film was good", "bad", "very dull plot", "great actors is fun"]


def _batch(labels=(1, 0, 0, 1)) -> dict[str, torch.Tensor]:
    data = TextDataset(TEXTS, list(labels), ["neg", "pos"]).set_tokenizer(tiny_tokenizer())
    return next(iter(data.loader(len(TEXTS))))


def test_split_puts_mask_and_labels_in_extras() -> None:
    raw = _batch()
    batch = TextClassificationTask().split(raw)
    # BERT tokenizers add token_type_ids
    assert set(batch.inputs) == {"input_ids", "attention_mask"}
    assert set(batch.extras) == {"labels", "index", "attention_mask"}
    assert torch.equal(batch.extras["attention_mask"], raw["attention_mask"]) and len(batch) == 4
    with pytest.raises(DistillError, match="dicts with input_ids and label"):
        TextClassificationTask().split((torch.zeros(2, 3), torch.zeros(2)))


def test_named_outputs_match_the_model() -> None:
    model = tiny_bert(layers=3).eval()
    task = TextClassificationTask()
    batch = task.split(_batch())
    with torch.no_grad(), FeatureTaps(model, ["bert.embeddings", "bert.encoder.layer.1"]) as taps:
        out = task.forward(model, batch.inputs)
    assert sorted(out) == [
        "hidden_states.0",
        "hidden_states.1",
        "hidden_states.2",
        "hidden_states.3",
        "logits",
    ]
    T = batch.inputs["input_ids"].shape[1]
    assert out["logits"].shape == (4, 2) and out["hidden_states.2"].shape == (4, T, 16)
    torch.testing.assert_close(
        out["hidden_states.0"], taps["bert.embeddings"]
    )  # 0 = the embeddings
    torch.testing.assert_close(
        out["hidden_states.2"], taps["bert.encoder.layer.1"]
    )  # N = layer N-1's output


def test_attentions_only_when_asked() -> None:
    model = tiny_bert(layers=3).eval()
    task = TextClassificationTask()
    batch = task.split(_batch())
    task.request(["@logits", "@hidden_states.1"])
    assert not task.output_attentions
    task.request(["@attentions.2"])
    with torch.no_grad():
        out = task.forward(model, batch.inputs)
    attn = out["attentions.2"]
    T = batch.inputs["input_ids"].shape[1]
    assert attn.shape == (4, 2, T, T) and "attentions.3" not in out
    torch.testing.assert_close(attn.sum(-1), torch.ones(4, 2, T))  # softmax rows (eval: no dropout)
    pad = batch.extras["attention_mask"] == 0
    assert torch.all(
        attn.masked_select(pad[:, None, None, :].expand_as(attn)) < 1e-6
    )  # padding unattended


def test_loss_is_cross_entropy_and_checks_labels() -> None:
    task = TextClassificationTask(label_smoothing=0.1)
    batch = task.split(_batch())
    logits = torch.randn(4, 2)
    expected = F.cross_entropy(logits, batch.targets, label_smoothing=0.1)
    torch.testing.assert_close(task.loss({"logits": logits}, batch), expected)
    with pytest.raises(DistillError, match="label 1 is out of range for a model with 1 classes"):
        task.loss({"logits": torch.randn(4, 1)}, batch)
    with pytest.raises(DistillError, match=r"label_smoothing must be in \[0, 1\]"):
        build_task("text_classification", label_smoothing=2)
    assert "text_classification" in TASKS.names()


def test_macro_f1_by_hand() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 1, 1, 2, 2])
    # class 0: tp 2, fp 0, fn 1 -> 4/5; class 1: tp 1, fp 1, fn 1 -> 1/2; class 2: tp 1, fp 1, fn 0 -> 2/3
    assert macro_f1(predicted, labels, 3) == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert macro_f1(labels, labels, 4) == 1.0  # a class never seen nor predicted is skipped
    sklearn = pytest.importorskip("sklearn.metrics")
    assert macro_f1(predicted, labels, 3) == pytest.approx(
        sklearn.f1_score(labels, predicted, average="macro")
    )


def test_evaluate_metrics_and_agreement() -> None:
    model = tiny_bert(layers=2)
    data = TextDataset(TEXTS * 3, [1, 0, 0, 1] * 3, ["neg", "pos"]).set_tokenizer(tiny_tokenizer())
    task = TextClassificationTask()
    metrics = task.evaluate(model, data.loader(5), teacher=model)
    assert model.training  # the model's mode is restored
    with torch.no_grad():
        predicted = model.eval()(
            **tiny_tokenizer()(TEXTS, padding=True, return_tensors="pt")
        ).logits.argmax(-1)
    accuracy = 100.0 * predicted.eq(torch.tensor([1, 0, 0, 1])).float().mean().item()
    assert metrics["top1"] == pytest.approx(accuracy) and metrics["agreement"] == 100.0
    assert metrics["samples"] == 12.0
    expected = macro_f1(predicted.repeat(3), torch.tensor([1, 0, 0, 1] * 3), 2)
    assert metrics["macro_f1"] == pytest.approx(100.0 * expected)


def test_distiller_trains_a_narrow_student() -> None:
    """KD from a tiny BERT into a narrower 1-layer one: a step lowers the KD term on the same batch."""
    from distill.models.hf import student_from_teacher

    teacher = tiny_bert(layers=3)
    with torch.no_grad():
        teacher.classifier.weight.mul_(30)  # confident, input-dependent teacher logits
    student = student_from_teacher(teacher, layers=[0], hidden_size=8)
    task = TextClassificationTask()
    distiller = Distiller(
        student, task, teacher=teacher, terms=[Term(KDLoss(4.0), name="kd")], task_weight=0.0
    )
    batch = task.split(_batch())
    distiller.eval()  # no dropout: the two forward passes differ only by the update
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    first = distiller(batch).parts["kd"]
    assert first > 1e-3
    first.backward()
    optimizer.step()
    assert distiller(batch).parts["kd"] < first
