"""train.distributed: fsdp: two CPU processes under torchrun (gloo) with FSDP2 train the same LM student
as one process with the same global batch (teacher sharded too), and a run stopped after a sharded
checkpoint resumes to exactly the weights of the run that was not stopped."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

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

    from distill.distiller import Distiller, Term
    from distill.lm_modes import sample_tokens
    from distill.tasks.causal_lm import CausalLMTask
    from distill.train import TrainConfig, Trainer
    from helpers.tiny_lm import TokenData, TokenKL

    run_dir, stop_after, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume"
    torch.set_num_threads(1)

    class BlockLM(nn.Module):
        def __init__(self, width, layers, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.embed = nn.Embedding(11, width)
            self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
            self.head = nn.Linear(width, 11)

        def generate(self, ids, max_new_tokens, temperature=1.0):  # submodules only, no forward
            for _ in range(max_new_tokens):
                x = self.embed(ids)
                x = x.cumsum(1) / torch.arange(1, x.shape[1] + 1).view(1, -1, 1)
                for block in self.blocks:
                    x = x + torch.tanh(block(x))
                probs = torch.softmax(self.head(x[:, -1]) / temperature, -1)
                ids = torch.cat([ids, torch.multinomial(probs, 1)], 1)
            return ids

        def forward(self, input_ids, attention_mask=None):
            x = self.embed(input_ids)
            x = x.cumsum(1) / torch.arange(1, x.shape[1] + 1).view(1, -1, 1)
            for block in self.blocks:
                x = x + torch.tanh(block(x))
            return self.head(x)

    teacher, student = BlockLM(24, 3, seed=1), BlockLM(12, 2, seed=2)
    distiller = Distiller(
        student, CausalLMTask(), teacher=teacher, terms=[Term(TokenKL(2.0), name="kl")],
        task_weight=0.5,
    )
    distributed = "fsdp" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "ddp"
    config = TrainConfig(
        epochs=2, batch_size=8, lr=0.01, optimizer="adamw", weight_decay=0.0, progress=False,
        seed=0, device="cpu", checkpoint_every=1, log_every=1, distributed=distributed,
    )
    data = TokenData(n=32, length=9)
    trainer = Trainer(distiller, data, TokenData(n=8, length=9, seed=5), config, run_dir,
                      console=Console(file=io.StringIO()))
    trainer.fit(resume=resume, stop_after=stop_after or None)
    weight = teacher.blocks[0].weight  # sharded: a DTensor whose local part is half the rows
    local = weight.to_local() if hasattr(weight, "to_local") else weight
    rank = os.environ.get("RANK", "0")
    torch.manual_seed(5)  # the sharded student samples (on-policy modes): gathered, then sharded again
    sample = sample_tokens(student, torch.zeros(2, 3, dtype=torch.long), 4, 1.0).tolist()
    kind = type(student.head.weight).__name__
    with open(os.path.join(run_dir, f"teacher{rank}.json"), "w") as f:
        json.dump({"kind": type(weight).__name__, "rows": local.shape[0], "sample": sample,
                   "after": kind}, f)
    """
)


def run(tmp_path: Path, run_dir: Path, processes: int, stop_after: int = 0, resume: bool = False):
    args = [str(run_dir), str(stop_after), "resume" if resume else "fresh"]
    torchrun(tmp_path, "fsdp_train.py", SCRIPT, args, processes, timeout=300, tests_on_path=True)


def evals(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    return [r for r in rows if "nll" in r]


def test_fsdp_on_two_processes_trains_like_one_and_resumes_exactly(tmp_path: Path) -> None:
    run(tmp_path, tmp_path / "one", 1)
    run(tmp_path, tmp_path / "two", 2)
    one, two = (
        load_file(tmp_path / "one" / "model.safetensors"),
        load_file(tmp_path / "two" / "model.safetensors"),
    )
    assert one.keys() == two.keys() and len(one) == 7  # the whole student, gathered
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5), key
    curve_one, curve_two = evals(tmp_path / "one"), evals(tmp_path / "two")
    assert len(curve_one) == len(curve_two) == 2
    for a, b in zip(curve_one, curve_two, strict=True):
        assert a["nll"] == pytest.approx(b["nll"], abs=1e-5)
        assert a["agreement"] == pytest.approx(b["agreement"])  # the sharded teacher evaluates too
    shards = [json.loads((tmp_path / "two" / f"teacher{r}.json").read_text()) for r in (0, 1)]
    alone = json.loads((tmp_path / "one" / "teacher0.json").read_text())
    for shard in shards:
        assert (shard["kind"], shard["rows"]) == ("DTensor", 12)  # 24 rows over two ranks
        assert shard["after"] == "DTensor"  # sharded again after sampling
        assert len(shard["sample"][0]) == 7 and shard["sample"] == alone["sample"]
    sharded = sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "sharded").iterdir())
    assert len(sharded) == 2 and all(name.startswith("step-") for name in sharded)  # keep 2

    run(tmp_path, tmp_path / "parts", 2, stop_after=5)
    assert not (tmp_path / "parts" / "model.safetensors").exists()
    run(tmp_path, tmp_path / "parts", 2, resume=True)
    resumed = load_file(tmp_path / "parts" / "model.safetensors")
    for key in two:
        assert torch.equal(resumed[key], two[key]), key
    kept = ("step", "epoch", "nll", "top1", "agreement")
    assert [[r[k] for k in kept] for r in evals(tmp_path / "parts")] == [
        [r[k] for k in kept] for r in curve_two
    ]
