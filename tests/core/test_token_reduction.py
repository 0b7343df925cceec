"""One reduction rule for token losses: the step's loss is the sum over its valid tokens divided by their
global count, however the step is split into micro-batches (and ranks). Dividing each micro-batch's mean
by the number of micro-batches instead (what the trainer does for tasks that count samples) gives a
different gradient when micro-batches hold different numbers of valid tokens: TRL's old GKD bug."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from distill import Distiller, Term, TrainConfig, Trainer
from distill.losses import build_loss
from distill.tasks.base import Batch, Task
from distill.train.distributed import DistInfo
from distill.train.reduction import micro_batch_weights
from helpers.torchrun import torchrun

V, T, N = 11, 8, 8


class TokenTask(Task):
    """A minimal next-token task: (ids, labels) rows, loss = mean CE over labels != -100."""

    name = "tokens"

    def split(self, batch) -> Batch:
        ids, labels = batch
        return Batch(ids, labels, {"labels": labels})

    def forward(self, model, inputs):
        return {"logits": model(inputs)}

    def loss(self, outputs, batch):
        logits = outputs["logits"]
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            batch.targets.reshape(-1),
            ignore_index=-100,
        )

    def batch_metrics(self, outputs, batch):
        return {}

    def count_items(self, batch):
        return int((batch.targets != -100).sum())


class SampleTask(TokenTask):
    """The same task without counting: micro-batches weigh the same."""

    def count_items(self, batch):
        return None


def lm(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(V, 6), nn.Tanh(), nn.Linear(6, V))


def token_data() -> TensorDataset:
    """Samples 0 and 1 have 8 and 6 valid targets, the others 1: however the step is split into two
    or four micro-batches, they hold different token counts."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (N, T), generator=g)
    labels = torch.randint(0, V, (N, T), generator=g)
    for i, valid in enumerate([8, 6] + [1] * (N - 2)):
        labels[i, valid:] = -100
    return TensorDataset(ids, labels)


def one_step(task: Task, accum: int) -> nn.Module:
    distiller = Distiller(
        lm(1),
        task,
        teacher=lm(2),
        terms=[Term(build_loss("forward_kl"), weight=0.5)],
        task_weight=0.5,
    )
    config = TrainConfig(
        epochs=1,
        batch_size=N,
        grad_accum_steps=accum,
        lr=0.5,
        optimizer="sgd",
        progress=False,
        device="cpu",
        seed=0,
        max_steps=1,
    )
    trainer = Trainer(distiller, token_data(), None, config, console=Console(file=io.StringIO()))
    trainer.fit()
    return distiller.student


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(
        (x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters(), strict=True)
    )


def test_accumulation_gives_the_update_of_one_batch():
    whole = one_step(TokenTask(), 1)
    assert _max_diff(whole, lm(1)) > 1e-3  # it trained
    for accum in (2, 4):
        assert _max_diff(one_step(TokenTask(), accum), whole) < 1e-6, accum


def test_per_micro_batch_means_would_differ():
    """The same data weighted 1/n per micro-batch (no count): not the update of one batch."""
    assert _max_diff(one_step(SampleTask(), 2), one_step(SampleTask(), 1)) > 1e-4


def test_weights():
    task = TokenTask()
    data = token_data()
    raws = [data[0:2], data[2:8]]  # 8 + 6 and 6 x 1 valid tokens
    weights = micro_batch_weights(
        task, [task.split(r) for r in raws], DistInfo(), torch.device("cpu")
    )
    assert weights.loss == pytest.approx([14 / 20, 6 / 20])
    assert weights.metric == pytest.approx([14 / 20, 6 / 20])
    ranks = micro_batch_weights(
        task, [task.split(r) for r in raws], DistInfo(world_size=2), torch.device("cpu")
    )
    assert ranks.loss == pytest.approx([2 * 14 / 20, 2 * 6 / 20])  # no process group: local total
    empty = [(data[0][0][None], torch.full((1, T), -100))] * 2
    assert micro_batch_weights(
        task, [task.split(r) for r in empty], DistInfo(), torch.device("cpu")
    ).loss == [0.0, 0.0]
    assert (
        micro_batch_weights(
            SampleTask(), [SampleTask().split(r) for r in raws], DistInfo(), torch.device("cpu")
        )
        is None
    )


SCRIPT = textwrap.dedent(
    """
    import io, sys
    import torch
    from rich.console import Console
    from safetensors.torch import save_file
    sys.path.insert(0, sys.argv[2])
    from test_token_reduction import TokenTask, one_step
    torch.set_num_threads(1)
    student = one_step(TokenTask(), int(sys.argv[3]))
    import torch.distributed as dist
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        save_file({k: v.contiguous() for k, v in student.state_dict().items()}, sys.argv[1])
    """
)


@pytest.mark.integration
def test_two_gloo_ranks_give_the_update_of_one_batch(tmp_path):
    """Two processes x two micro-batches with unequal token counts = one process, one batch."""
    from safetensors.torch import load_file

    here = str(Path(__file__).parent)
    single, double = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    torchrun(
        tmp_path,
        "step.py",
        SCRIPT,
        [str(single), here, "1"],
        processes=1,
        timeout=300,
        tests_on_path=True,
    )
    torchrun(tmp_path, "step.py", SCRIPT, [str(double), here, "2"], timeout=300, tests_on_path=True)
    a, b = load_file(str(single)), load_file(str(double))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), (key, (a[key] - b[key]).abs().max())
