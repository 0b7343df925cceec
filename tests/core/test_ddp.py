"""Two CPU processes under torchrun (gloo) train the same student as one process with the same global batch."""

import textwrap

import pytest
import torch

from helpers.torchrun import torchrun

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent(
    """
    import atexit
    import io
    import os
    import sys

    import torch
    import torch.distributed as dist
    from rich.console import Console
    from safetensors.torch import save_file
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import TensorDataset

    from distill.distiller import Distiller, Term
    from distill.losses import KDLoss
    from distill.tasks import ClassificationTask
    from distill.train import TrainConfig, Trainer

    out, run_dir = sys.argv[1], sys.argv[2]

    def group_left():  # registered before distill's own handler, so it runs after it
        if dist.is_initialized():
            print("the process group distill created was not destroyed at exit", flush=True)
            os._exit(3)

    atexit.register(group_left)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 4, 4, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    train = TensorDataset(x, y)
    val = TensorDataset(x[:64], y[:64])

    torch.manual_seed(0)  # identical models on every rank (no batchnorm, no dropout)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 2))
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    init = {"init." + k: v.detach().clone() for k, v in student.state_dict().items()}
    distiller = Distiller(
        student, ClassificationTask(), teacher=teacher,
        terms=[Term(KDLoss(4.0), weight=0.7)], task_weight=0.3,
    )
    config = TrainConfig(
        epochs=2, batch_size=32, lr=0.1, progress=False, deterministic=False, seed=0, device="cpu",
        warmup_epochs=0.5, grad_accum_steps=int(os.environ.get("ACCUM", "1")),
    )
    no_syncs = []  # grad_accum_steps: DDP skips the all-reduce of all but the last micro-batch
    plain_no_sync = DistributedDataParallel.no_sync
    DistributedDataParallel.no_sync = lambda self: no_syncs.append(1) or plain_no_sync(self)
    trainer = Trainer(distiller, train, val, config, run_dir=run_dir, console=Console(file=io.StringIO()))
    summary = trainer.fit()
    expected = 16 * (config.grad_accum_steps - 1) if trainer.dist.enabled else 0
    assert len(no_syncs) == expected, (len(no_syncs), expected)
    if trainer.dist.is_main:
        assert summary["steps"] == 16, summary["steps"]
        state = {"final." + k: v.detach().contiguous() for k, v in distiller.student.state_dict().items()}
        save_file({**state, **init}, out)
    """
)


def _run(processes, tmp_path, name, accum=1):
    out = tmp_path / f"{name}.safetensors"
    run_dir = tmp_path / f"run_{name}"
    args = [str(out), str(run_dir)]
    proc = torchrun(tmp_path, "train_ddp.py", SCRIPT, args, processes, env={"ACCUM": str(accum)})
    assert out.is_file(), proc.stderr[-3000:]
    return out, run_dir


def test_two_process_ddp_matches_single_process(tmp_path):
    from safetensors.torch import load_file

    single, single_dir = _run(1, tmp_path, "single")
    double, double_dir = _run(2, tmp_path, "ddp")
    a, b = load_file(str(single)), load_file(str(double))
    assert a.keys() == b.keys()
    finals = [k for k in a if k.startswith("final.")]
    assert finals
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), (
            key,
            (a[key] - b[key]).abs().max().item(),
        )
    # training moved the weights (the comparison is not between two untouched initialisations)
    for key in finals:
        init = a["init." + key.removeprefix("final.")]
        assert (a[key] - init).abs().max() > 1e-3, key
    # only rank 0 writes artefacts, and it writes them all
    for run_dir in (single_dir, double_dir):
        for name in (
            "metrics.jsonl",
            "summary.json",
            "checkpoints/manifest.json",
            "model.safetensors",
        ):
            assert (run_dir / name).is_file(), name
    train_lines = [
        line
        for line in (double_dir / "metrics.jsonl").read_text().splitlines()
        if '"train"' in line
    ]
    single_lines = [
        line
        for line in (single_dir / "metrics.jsonl").read_text().splitlines()
        if '"train"' in line
    ]
    assert len(train_lines) == len(single_lines)  # one writer, not two


def test_ddp_with_gradient_accumulation_matches_single_process(tmp_path):
    """Two ranks x two micro-batches (DDP syncs only the last one's backward) = one batch of 32."""
    from safetensors.torch import load_file

    single, _ = _run(1, tmp_path, "single")
    double, _ = _run(2, tmp_path, "ddp_accum", accum=2)
    a, b = load_file(str(single)), load_file(str(double))
    finals = [k for k in a if k.startswith("final.")]
    assert finals and a.keys() == b.keys()
    for key in finals:
        assert torch.allclose(a[key], b[key], atol=1e-5), (key, (a[key] - b[key]).abs().max())
