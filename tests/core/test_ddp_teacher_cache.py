"""The teacher cache under ``torchrun``: each of two gloo processes runs the teacher over its own slice of
the training set only (61 samples: 30 and 31, no sample twice), the slices are gathered, and every rank
ends with the whole table, equal to the teacher's outputs, then trains from it."""

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

    from distill.data.tensor import TensorDataset
    from distill.distiller import Distiller, Term
    from distill.losses import KDLoss
    from distill.tasks import ClassificationTask
    from distill.teacher_cache import CachedTeacher
    from distill.train import TrainConfig, Trainer

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(61, 1, 4, 4, generator=g)
    data = TensorDataset(x, torch.randint(0, 3, (61,), generator=g))
    torch.manual_seed(0)  # identical models on every rank
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        expected = teacher(x)
    seen = []
    teacher.register_forward_hook(lambda m, inputs, out: seen.append(len(inputs[0])))
    task = ClassificationTask()
    cache = CachedTeacher(teacher, task, ["@logits"])
    distiller = Distiller(student, task, teacher=teacher, terms=[Term(KDLoss(4.0))], source=cache)
    config = TrainConfig(epochs=1, batch_size=8, eval_batch_size=8, progress=False, device="cpu")
    trainer = Trainer(distiller, data, None, config, console=Console(file=io.StringIO()))
    trainer.prepare()
    seen.clear()  # the example batch (setup) ran the teacher online; count the fill only
    cache.cache.clear()
    cache.fill_from(data, 8)
    filled = sum(seen)
    summary = trainer.fit()
    rank = int(os.environ["RANK"])
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump({
            "filled": filled,
            "after_fill": sum(seen) - filled,  # training read the cache: the teacher did not run
            "max_error": float((cache.cache["@logits"] - expected).abs().max()),
            "rows": len(cache.cache["@logits"]),
            "steps": summary["steps"],
        }, f)
    """
)


def test_two_ranks_fill_the_cache_by_slices_and_each_holds_it_all(tmp_path: Path) -> None:
    torchrun(tmp_path, "cache_ddp.py", SCRIPT, [str(tmp_path)])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["filled"] for r in ranks] == [30, 31]  # each rank its own slice, nothing twice
    for r in ranks:
        assert r["rows"] == 61 and r["max_error"] < 1e-6  # the whole table, the teacher's outputs
        assert r["after_fill"] == 0 and r["steps"] == 8  # 61 samples, 4 per rank per step
