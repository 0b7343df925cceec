"""What each rank does under torchrun (two CPU processes, gloo): one launch runs several short fits, each
recording what one test checks, so a failure in one fit does not hide the others."""

import json
import textwrap
from pathlib import Path

import pytest
import torch

from helpers.torchrun import torchrun

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent(
    """
    import io
    import json
    import os
    import sys
    import traceback

    import torch
    from rich.console import Console
    from torch import nn
    from torch.utils.data import TensorDataset

    from distill.distiller import Distiller, Term
    from distill.schedules import LinearWarmup
    from distill.tasks import ClassificationTask
    from distill.train import TrainConfig, Trainer

    out = sys.argv[1]
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 4, 4, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    train = TensorDataset(x, y)


    class Feat(nn.Module):
        '''Matches the hidden layer only: the student's head gets its gradient from the task loss alone.'''

        def __init__(self):
            super().__init__()
            self.register_buffer("seen", torch.zeros(()))
            self.own = 0.0  # what this rank added to `seen` (a broadcast from rank 0 would overwrite it)
            self.draws = []  # the global RNG's first draw of each step

        def forward(self, s, t):
            self.draws.append(torch.rand(()).item())
            add = s.detach().abs().sum()
            self.seen += add
            self.own += add.item()
            return (s - t).pow(2).mean()


    def fit(run_dir, task_weight):
        torch.manual_seed(0)
        teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 2))
        student = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
        loss = Feat()
        distiller = Distiller(
            student, ClassificationTask(), teacher=teacher,
            terms=[Term(loss, student="1", teacher="1")], task_weight=task_weight,
        )
        config = TrainConfig(
            epochs=1, batch_size=16, lr=0.1, progress=False, seed=3, device="cpu", warmup_epochs=0,
        )
        trainer = Trainer(distiller, train, None, config, run_dir=run_dir, console=Console(file=io.StringIO()))
        trainer.fit()
        return trainer, loss


    results = {}
    for name, weight in (
        ("zero_task_weight", 0.0),
        ("ramped_task_weight", LinearWarmup(1.0, warmup_epochs=2.0)),
        ("buffers", 1.0),
    ):
        try:
            trainer, loss = fit(f"run_{name}", weight)
            results[name] = {
                "steps": trainer.global_step,
                "seen": loss.seen.item(),
                "own": loss.own,
                "draws": loss.draws,
                "rank": trainer.dist.rank,
            }
        except Exception as err:
            results[name] = {"error": "".join(traceback.format_exception_only(err))[-2000:]}
    with open(f"{out}.{os.environ.get('RANK', '0')}.json", "w") as f:
        json.dump(results, f)
    """
)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """``[rank0_results, rank1_results]`` from one two-process run of SCRIPT."""
    tmp = tmp_path_factory.mktemp("ddp_ranks")
    out = tmp / "result"
    torchrun(tmp, "ranks.py", SCRIPT, [str(out)])
    return [json.loads(Path(f"{out}.{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("name", ["zero_task_weight", "ramped_task_weight"])
def test_a_zero_weighted_task_loss_trains_under_ddp(ranks, name):
    """The task loss is the head's only gradient; weighted 0 (or ramped from 0) the step must still run."""
    for result in ranks:
        assert "error" not in result[name], result[name]["error"]
        assert result[name]["steps"] == 4


def test_loss_buffers_are_not_overwritten_by_rank_0(ranks):
    """A loss's buffer is the loss's business (CRD gathers its banks itself): DDP must not broadcast it."""
    for result in ranks:
        r = result["buffers"]
        assert "error" not in r, r["error"]
        assert r["seen"] == pytest.approx(r["own"], rel=1e-5), r["rank"]
    assert ranks[0]["buffers"]["seen"] != pytest.approx(ranks[1]["buffers"]["seen"], rel=1e-3)


def test_each_rank_draws_its_own_random_numbers(ranks):
    """Dropout masks, CRD negatives and MGD masks come from the global RNG: two ranks must not repeat each
    other's draws, and rank 0 keeps the single-process seed of each step (seed * 1_000_003 + step)."""
    draws = [result["buffers"]["draws"] for result in ranks]
    assert len(draws[0]) == len(draws[1]) == 4
    assert all(a != b for a, b in zip(*draws, strict=True)), draws
    for step, value in enumerate(draws[0]):
        torch.manual_seed(3 * 1_000_003 + step)
        assert value == torch.rand(()).item(), step


def test_step_seeds_fit_torch_for_any_configured_seed():
    """``train.seed`` goes up to 2**63 - 1; ``seed * 1_000_003`` alone overflowed ``torch.manual_seed``."""
    from distill.train.step import step_seed

    for rank in (0, 1, 7):
        torch.manual_seed(step_seed(2**63 - 1, 10, rank))
    assert step_seed(3, 5) == 3 * 1_000_003 + 5
    assert len({step_seed(3, s, r) for s in range(50) for r in range(4)}) == 200
