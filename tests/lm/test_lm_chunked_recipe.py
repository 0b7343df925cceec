"""A term's `chunk_size` puts a recipe's token loss on the chunked path (losses/_chunked.py) through the one
assembly path: the term then reads hidden states and head weights, never the teacher's logits, and
gives the plain term's loss and gradients. Settings it cannot serve are one-line recipe errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import distill.losses._chunked as chunked_module
import distill.losses._lm as lm_module
from distill.config.build import build
from distill.config.load import load_recipe
from distill.errors import ConfigError
from distill.losses._chunked import ChunkedTokenLoss
from lm.lm_helpers import corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["teacher.weights=null", "data.options.block_size=16", "data.train_subset=8",
        "data.test_subset=4", "train.batch_size=4", "train.progress=false"]  # fmt: skip
TERMS = "distill.terms=[{loss: %s, weight: 0.5, options: {temperature: 1.5}%s}]"


def step(tmp_path: Path, loss: str, chunk: str, monkeypatch=None):
    root = corpus(tmp_path / "corpus")
    overrides = [f"data.root={root}", *TINY, TERMS % (loss, chunk), f"output={tmp_path / 'run'}"]
    built = build(load_recipe("shakespeare/kd", overrides))
    distiller = built.distiller
    batch = distiller.task.split(next(iter(built.train_data.loader(4))))
    out = distiller(batch, step=0)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in built.student.named_parameters() if p.grad is not None}
    return distiller, out, grads


@pytest.mark.parametrize("loss", ["forward_kl", "generalized_jsd"])
def test_chunk_size_changes_the_path_not_the_loss_or_gradients(tmp_path, loss, monkeypatch):
    plain, plain_out, plain_grads = step(tmp_path, loss, "")
    assert "@logits" in plain.teacher_taps

    calls = []
    apply = chunked_module._ChunkedDivergence.apply
    monkeypatch.setattr(
        chunked_module._ChunkedDivergence,
        "apply",
        lambda *args: calls.append(args[-1]) or apply(*args),
    )

    def no_dense(*args, **kwargs):
        raise AssertionError("the plain path ran although the term has chunk_size")

    monkeypatch.setattr(lm_module, "token_divergence", no_dense)
    chunked, out, grads = step(tmp_path, loss, ", chunk_size: 5")
    assert isinstance(chunked.terms[0].loss, ChunkedTokenLoss) and set(calls) == {5}
    assert chunked.teacher_taps == ["@lm_hidden", "@lm_head"]  # no teacher logits asked for
    name = loss
    torch.testing.assert_close(out.parts[name], plain_out.parts[name], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.loss, plain_out.loss, rtol=1e-5, atol=1e-7)
    assert grads.keys() == plain_grads.keys() and grads
    for key, grad in plain_grads.items():
        torch.testing.assert_close(grads[key], grad, rtol=1e-5, atol=1e-7, msg=key)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ([TERMS % ("kd", ", chunk_size: 8")], "loss 'kd' has no chunked path"),
        (["distill.terms=[{loss: forward_kl, student: '@hidden_states.1', "
          "teacher: '@hidden_states.1', chunk_size: 8}]"], "keep @logits on both sides"),
        ([TERMS % ("forward_kl", ", chunk_size: 0")], "chunk_size"),
        ([TERMS % ("forward_kl", ", chunk_size: 8"), "distill.topk_cache={dir: x, k: 8}"],
         "a teacher cache keeps no hidden states"),
        ([TERMS % ("forward_kl", ", chunk_size: 8"), "train.distributed=fsdp"],
         "which train.distributed: fsdp shards"),
    ],
)  # fmt: skip
def test_chunk_size_it_cannot_serve_is_a_one_line_recipe_error(overrides, needle) -> None:
    with pytest.raises(ConfigError) as err:
        load_recipe("shakespeare/kd", overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)
