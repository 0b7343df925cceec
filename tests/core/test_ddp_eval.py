"""Evaluation under DDP is shared: each of two gloo processes predicts its own slice of the validation set
(no sample twice, none left out, uneven slices) and every rank gets the metrics one process computes
over the whole set with rank 0's model (BatchNorm statistics included), ECE and agreement included
(computed from all predictions, not averaged)."""

import json
import textwrap
from pathlib import Path

import pytest

from helpers.torchrun import torchrun

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent(
    """
    import io
    import json
    import os
    import sys

    import torch
    from rich.console import Console
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from distill.distiller import Distiller, Term
    from distill.losses import KDLoss
    from distill.tasks import ClassificationTask
    from distill.train import TrainConfig, Trainer

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(61, 1, 4, 4, generator=g)  # 61: slices of 30 and 31
    y = torch.randint(0, 3, (61,), generator=g)
    val = TensorDataset(x, y)
    torch.manual_seed(0)  # identical models on every rank
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    rank = int(os.environ.get("RANK", "0"))
    student[2].running_mean.fill_(rank)  # DDP leaves BN statistics per rank: rank 0's are the model's
    expected = ClassificationTask().evaluate(student, DataLoader(val, batch_size=64), teacher, "cpu")
    distiller = Distiller(student, ClassificationTask(), teacher=teacher, terms=[Term(KDLoss(4.0))])
    config = TrainConfig(epochs=1, batch_size=8, eval_batch_size=8, progress=False, device="cpu")
    trainer = Trainer(distiller, val, val, config, console=Console(file=io.StringIO()))
    rows = []
    student.register_forward_hook(lambda m, inputs, out: rows.append(len(inputs[0])))
    got = trainer.evaluate()
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump({"expected": expected, "got": got, "rows": sum(rows)}, f)
    """
)


def test_two_ranks_evaluate_their_slices_and_agree_with_one_process(tmp_path: Path) -> None:
    torchrun(tmp_path, "eval_ddp.py", SCRIPT, [str(tmp_path)])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rows"] for r in ranks] == [30, 31]  # each rank its own slice, nothing twice
    expected = ranks[0]["expected"]  # one process, rank 0's model
    assert expected["samples"] == 61 and set(expected) >= {"top1", "nll", "ece", "agreement"}
    for r in ranks:
        assert r["got"].keys() == expected.keys()
        for key, value in expected.items():
            assert r["got"][key] == pytest.approx(value, abs=1e-5), key


def test_metrics_of_slices_equal_the_whole_set_and_an_empty_slice_counts_nothing() -> None:
    """A rank's slice may be empty (fewer samples than ranks); the metrics of the slices are those of
    the whole set, and a set empty on every rank is still the one-line error."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from distill.errors import DistillError
    from distill.tasks import ClassificationTask

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(7, 5), torch.randint(0, 3, (7,)))
    model, teacher, task = nn.Linear(5, 3), nn.Linear(5, 3), ClassificationTask()
    whole = task.evaluate(model, DataLoader(data, batch_size=4), teacher)
    parts = [
        task.predictions(model, DataLoader(data, batch_size=2, sampler=order), teacher)
        for order in ([0, 1, 2], [], [3, 4, 5, 6])
    ]
    assert len(parts[1][1]) == 0
    got = task.metrics_of(parts)
    assert got.keys() == whole.keys()
    assert got == pytest.approx(whole, abs=1e-5)
    with pytest.raises(DistillError, match="evaluation data is empty"):
        task.metrics_of([parts[1], parts[1]])
