"""The text losses wired through the Distiller on tiny random Hugging Face BERTs (no download): task
outputs ``@hidden_states.N`` / ``@attentions.N`` and a module tap for MiniLM's values, ``attention_mask``
handed over from ``Batch.extras``, TinyBERT's ``W_h`` built in ``setup()`` and trained, a ``linear``
projector on 3-D token states (also on list taps). End to end, the ids of padded tokens change no term.

The task is the text task adapter (``text_classification``) with attention outputs on."""

from __future__ import annotations

import pytest
import torch

from distill.distiller import Distiller, Term
from distill.losses import build_loss

transformers = pytest.importorskip("transformers")


def _bert(hidden, layers, seed):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=8, num_labels=3,
        attn_implementation="eager", attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def _batch(pad_id=0):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 30, (4, 6), generator=g)
    mask = (torch.arange(6)[None] < torch.tensor([6, 3, 4, 1])[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad_id))
    return {"input_ids": ids, "attention_mask": mask, "label": torch.tensor([0, 1, 2, 1])}


def _distiller():
    student, teacher = _bert(16, 1, seed=0), _bert(24, 2, seed=1)
    value = "bert.encoder.layer.{}.attention.self.value"
    terms = [
        Term(build_loss("hidden_mse"), ["@hidden_states.0", "@hidden_states.1"],
             ["@hidden_states.0", "@hidden_states.2"]),
        Term(build_loss("attention_mse"), "@attentions.0", "@attentions.1"),
        Term(build_loss("hidden_cosine"), "@hidden_states.1", "@hidden_states.2", projector="linear"),
        Term(build_loss("pkd"), ["@hidden_states.1"], ["@hidden_states.1"], projector="linear"),
        Term(build_loss("minilm"), ["@attentions.0", value.format(0)],
             ["@attentions.1", value.format(1)]),
        Term(build_loss("minilm", relation_heads=4),
             [f"bert.encoder.layer.0.attention.self.{p}" for p in ("query", "key", "value")],
             [f"bert.encoder.layer.1.attention.self.{p}" for p in ("query", "key", "value")],
             name="minilmv2"),
        Term(build_loss("kd"), "@logits", "@logits"),
    ]  # fmt: skip
    from distill.tasks.text import TextClassificationTask

    task = TextClassificationTask(output_attentions=True)
    distiller = Distiller(student, task, teacher=teacher, terms=terms)
    distiller.setup(_batch())
    return distiller


def test_text_terms_train_through_the_distiller():
    distiller = _distiller()
    w_h = distiller.terms[0].loss.projector
    assert tuple(w_h.weight.shape) == (24, 16)  # TinyBERT's W_h, built from the example batch
    params = distiller.trainable_parameters()
    assert any(p is w_h.weight for p in params)
    optimizer = torch.optim.SGD(params, lr=0.1)
    batch = distiller.task.split(_batch())
    before = distiller(batch)
    for _ in range(2):
        step = distiller(batch)
        optimizer.zero_grad()
        step.loss.backward()
        assert w_h.weight.grad is not None and w_h.weight.grad.abs().sum() > 0
        optimizer.step()
    assert set(before.parts) == {
        "task", "hiddenmse", "attentionmse", "hiddencosine", "pkd", "minilm", "minilmv2", "kd",
    }  # fmt: skip
    assert all(torch.isfinite(v) for v in before.parts.values())
    assert float(distiller(batch).loss.detach()) < float(before.loss.detach())


def test_the_ids_of_padded_tokens_change_no_term():
    distiller = _distiller()
    distiller.eval()
    with torch.no_grad():
        one = distiller(distiller.task.split(_batch(pad_id=0)))
        other = distiller(distiller.task.split(_batch(pad_id=7)))
    for name, value in one.parts.items():
        torch.testing.assert_close(other.parts[name], value, msg=f"term {name} saw padding")
