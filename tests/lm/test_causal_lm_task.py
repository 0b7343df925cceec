"""The causal_lm task: the one shift, -100 masking, the task loss and the evaluation metrics, checked
by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.data.lm import CharTokenizer, LMDataset, pack_blocks, prompt_response_rows
from distill.errors import DistillError
from distill.tasks import build_task


class Uniform(nn.Module):
    """Equal logits for every token: NLL ln V everywhere."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None):
        return torch.zeros(*input_ids.shape, self.vocab) + self.dummy


class Copier(nn.Module):
    """Predicts the input token itself (logit 10 on it): right whenever token j+1 equals token j."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None):
        return 10.0 * nn.functional.one_hot(input_ids, self.vocab).float()


def test_split_shifts_once_and_masks_padding():
    task = build_task("causal_lm")
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 8], [1, 2, 0, 0]]),
        "labels": torch.tensor([[-100, -100, 7, 8], [1, 2, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
        "index": torch.tensor([3, 4]),
    }
    split = task.split(batch)
    # the model reads tokens 0..L-2; row j is scored against token j+1
    assert split.inputs["input_ids"].tolist() == [[5, 6, 7], [1, 2, 0]]
    assert split.inputs["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert split.targets.tolist() == [[-100, 7, 8], [2, -100, -100]]  # padding never scored
    assert split.extras["labels"] is split.targets
    assert split.extras["index"].tolist() == [3, 4]
    assert batch["labels"][1].tolist() == [1, 2, 0, 0]  # the batch itself is untouched


def test_loss_is_the_mean_over_valid_targets():
    task = build_task("causal_lm")
    logits = torch.randn(2, 3, 5, requires_grad=True)
    targets = torch.tensor([[-100, 1, 4], [2, -100, -100]])
    batch = task.split({"input_ids": torch.zeros(2, 4, dtype=torch.long)})
    batch.targets = targets
    loss = task.loss({"logits": logits}, batch)
    logp = logits.log_softmax(-1)
    by_hand = -(logp[0, 1, 1] + logp[0, 2, 4] + logp[1, 0, 2]) / 3
    assert torch.allclose(loss, by_hand)
    batch.targets = torch.full_like(targets, -100)  # nothing to score: 0 with a graph, not NaN
    empty = task.loss({"logits": logits}, batch)
    assert empty.item() == 0.0 and empty.requires_grad


def test_micro_batches_are_weighted_by_their_valid_tokens():
    # the trainer's one reduction rule needs the task to count its items: without count_items two
    # micro-batches of 3 and 1 valid tokens would weigh 1/2 each instead of 3/4 and 1/4
    from distill.train.distributed import DistInfo
    from distill.train.reduction import micro_batch_weights

    task = build_task("causal_lm")
    ids = torch.zeros(1, 4, dtype=torch.long)
    long = {"input_ids": ids, "labels": torch.tensor([[0, 1, 2, 3]])}
    short = {"input_ids": ids, "labels": torch.tensor([[0, -100, -100, 3]])}
    assert task.count_items(task.split(long)) == 3
    weights = micro_batch_weights(
        task, [task.split(long), task.split(short)], DistInfo(), torch.device("cpu")
    )
    assert weights is not None
    assert weights.loss == pytest.approx([0.75, 0.25])


def test_bits_per_character_by_hand():
    # a uniform model over V tokens: nll ln V per token; tokens of 2 characters halve the bpc
    vocab = 8
    task = build_task("causal_lm")
    ids = torch.randint(0, vocab, (3, 5))
    batches = [
        {"input_ids": ids[:2], "labels": ids[:2], "chars": torch.tensor([8, 8])},
        {"input_ids": ids[2:], "labels": ids[2:], "chars": torch.tensor([8])},
    ]
    metrics = task.evaluate(Uniform(vocab), batches)
    assert metrics["tokens"] == 12
    assert metrics["nll"] == pytest.approx(math.log(vocab))
    assert metrics["ppl"] == pytest.approx(vocab)
    assert metrics["bpc"] == pytest.approx(12 * math.log2(vocab) / 24)
    no_chars = task.evaluate(Uniform(vocab), [{"input_ids": ids, "labels": ids}])
    assert (
        "bpc" not in no_chars
    )  # unknown characters: no bits per character rather than a wrong one


def test_top1_and_agreement_by_hand():
    task = build_task("causal_lm")
    ids = torch.tensor([[1, 1, 2, 2, 3]])  # targets 1 2 2 3; the copier predicts 1 1 2 2
    metrics = task.evaluate(Copier(4), [{"input_ids": ids, "labels": ids}], teacher=Copier(4))
    assert metrics["top1"] == pytest.approx(50.0)
    assert metrics["agreement"] == pytest.approx(100.0)
    masked = torch.tensor([[1, 1, -100, 2, -100]])  # only the targets 1 (hit) and 2 (hit) remain
    metrics = task.evaluate(Copier(4), [{"input_ids": ids, "labels": masked}])
    assert metrics["tokens"] == 2 and metrics["top1"] == pytest.approx(100.0)


def test_evaluation_with_nothing_to_score_is_an_error():
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(DistillError, match="no scored tokens"):
        build_task("causal_lm").evaluate(Uniform(4), [{"input_ids": ids, "labels": ids * 0 - 100}])


def test_bad_batches_are_one_line_errors():
    task = build_task("causal_lm")
    with pytest.raises(DistillError, match="input_ids"):
        task.split({"image": torch.zeros(1)})
    with pytest.raises(DistillError, match="L >= 2"):
        task.split({"input_ids": torch.zeros(2, 1, dtype=torch.long)})
    batch = task.split({"input_ids": torch.tensor([[0, 9]])})
    with pytest.raises(DistillError, match="token id 9 is out of range"):
        task.loss({"logits": torch.zeros(1, 1, 4)}, batch)


def test_pack_blocks_scores_every_token_once():
    ids = torch.arange(23)
    blocks = pack_blocks(ids, 5)
    assert blocks.shape == (4, 6)
    assert blocks[:, 1:].flatten().tolist() == list(range(1, 21))  # each target once, in order
    assert blocks[1, 0] == blocks[0, -1]  # consecutive blocks share one token
    with pytest.raises(DistillError, match="too short"):
        pack_blocks(torch.arange(5), 5)


def test_prompt_response_rows_mask_the_prompt_and_padding():
    tok = CharTokenizer("abcdxyz")
    rows = prompt_response_rows([("ab", "cd"), ("xyz", "a")], tok, max_length=5)
    a, b, c, d, x, y, z = range(7)
    assert rows["input_ids"].tolist() == [[a, b, c, d, 0], [x, y, z, a, 0]]
    assert rows["labels"].tolist() == [[-100, -100, c, d, -100], [-100, -100, -100, a, -100]]
    assert rows["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]
    data = LMDataset(rows["input_ids"], tok, rows["labels"], rows["attention_mask"])
    split = build_task("causal_lm").split(data.batch(torch.tensor([0, 1])))
    # after the shift only the response is scored: row 0 predicts c from b and d from c
    assert split.targets.tolist() == [[-100, c, d, -100], [-100, -100, a, -100]]
    assert data.chars.tolist() == [2, 1]


def test_char_tokenizer_is_deterministic_and_round_trips():
    one = CharTokenizer.from_texts(["to be", "or not"])
    two = CharTokenizer.from_texts(["or not", "to be", "be"])
    assert one.alphabet == two.alphabet == " benort"
    assert one.decode(one.encode("not to be")) == "not to be"
    with pytest.raises(DistillError, match="'!' is not in the tokenizer's alphabet"):
        one.encode("be!")


def test_hidden_state_term_between_decoders(tmp_path):
    # TinyBERT's hidden_mse from the student's only block to the teacher's last, widths 64 -> 128
    from distill.config.build import build, make_trainer
    from distill.config.load import load_recipe
    from lm.lm_helpers import corpus

    root = corpus(tmp_path / "corpus")
    term = (
        "{loss: hidden_mse, student: '@hidden_states.1', teacher: '@hidden_states.4', weight: 1.0}"
    )
    recipe = load_recipe("shakespeare/kd", [
        "teacher.weights=null", f"data.root={root}", "data.options.block_size=16",
        "data.train_subset=8", "data.test_subset=4", "train.batch_size=4", "train.progress=false",
        f"distill.terms=[{{loss: forward_kl, weight: 0.5}}, {term}]", f"output={tmp_path / 'run'}",
    ])  # fmt: skip
    built = build(recipe)
    split = built.distiller.task.split(next(iter(built.train_data.loader(4))))
    assert split.extras["attention_mask"].shape == (4, 16)  # packed text: all ones
    assert split.extras["attention_mask"].all()
    summary = make_trainer(built, run_dir=tmp_path / "run").fit(stop_after=1)
    assert summary["steps"] == 1
    assert built.distiller.terms[1].loss.projector.weight.shape == (128, 64)
