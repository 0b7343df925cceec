"""train.ema: the weight average against a plain PyTorch reference, and what the trainer does with it
(evaluates, checkpoints, resumes bit-exactly and hands it over)."""

import io
import math

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from distill.config.build import load_weights
from distill.distiller import Distiller, Term
from distill.losses import KDLoss
from distill.tasks import ClassificationTask
from distill.train import TrainConfig, Trainer, load_student_weights
from distill.train.checkpoint import load_checkpoint
from distill.train.ema import WeightEMA

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())


def student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2)
    )


def teacher() -> nn.Module:
    lin = nn.Linear(16, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([-torch.ones(16), torch.ones(16)]) / 4)
        lin.bias.zero_()
    return nn.Sequential(nn.Flatten(), lin)


def fit(run_dir, resume=False, stop_after=None, **overrides):
    distiller = Distiller(
        student(), ClassificationTask(), teacher=teacher(), terms=[Term(KDLoss(2.0), weight=0.5)]
    )
    cfg = dict(epochs=3, batch_size=16, lr=0.1, progress=False, device="cpu", seed=0)
    cfg.update(ema=0.9, ema_tau=4.0, deterministic=True, checkpoint_every=1)
    cfg.update(overrides)
    trainer = Trainer(
        distiller,
        data(64, 0),
        data(32, 1),
        TrainConfig(**cfg),
        run_dir=run_dir,
        console=Console(file=io.StringIO()),
    )
    summary = trainer.fit(resume=resume, stop_after=stop_after)
    return trainer, summary


def same(a: nn.Module, b: nn.Module) -> bool:
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_average_matches_a_plain_reference_loop() -> None:
    """v = d v + (1 - d) m for float entries with d = decay (1 - exp(-n / tau)); integer buffers copied."""
    model = student()
    ema = WeightEMA(model, decay=0.9, tau=3.0)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for n in range(1, 6):
        model.train()
        loss = model(torch.randn(8, 1, 4, 4)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model)
        d = 0.9 * (1 - math.exp(-n / 3.0))
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                reference[key] = d * reference[key] + (1 - d) * value
            else:
                reference[key] = value.clone()
    got = ema.module.state_dict()
    for key, value in reference.items():
        torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-7)
    assert got["2.num_batches_tracked"].item() == 5
    assert not torch.allclose(got["1.weight"], model.state_dict()["1.weight"])  # it did average
    assert not any(p.requires_grad for p in ema.module.parameters())


@pytest.mark.parametrize("decay, tau", [(1.0, 10.0), (0.0, 10.0), (0.9, 0.0)])
def test_bad_settings_are_refused(decay: float, tau: float) -> None:
    with pytest.raises(ValueError, match="EMA"):
        WeightEMA(student(), decay, tau)
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=decay, ema_tau=tau)


def test_the_average_is_evaluated_checkpointed_and_handed_over(tmp_path) -> None:
    trainer, summary = fit(tmp_path / "run")
    average, raw = trainer.ema.module, trainer.distiller.student
    assert trainer.ema.updates == summary["steps"] == 12
    assert not same(average, raw)
    task, loader = ClassificationTask(), trainer._val_loader()
    expected = task.evaluate(average, loader, teacher())
    assert summary["last"]["nll"] == pytest.approx(expected["nll"])
    assert summary["last"]["nll"] != pytest.approx(task.evaluate(raw, loader, teacher())["nll"])
    handed = student(seed=1)
    load_weights(handed, str(tmp_path / "run" / "model.safetensors"), "student")
    assert same(handed, average)
    from_run = student(seed=2)
    load_student_weights(tmp_path / "run", from_run, "last")  # what export and compare load
    assert same(from_run, average)
    as_teacher = student(seed=3)
    load_weights(as_teacher, str(tmp_path / "run"), "teacher")
    assert same(as_teacher, load_best_average(tmp_path / "run"))


def load_best_average(run_dir) -> nn.Module:
    tensors, _ = load_checkpoint(run_dir / "checkpoints", "best")
    model = student(seed=4)
    model.load_state_dict({k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")})
    return model


def test_resume_continues_the_average_bit_exactly(tmp_path) -> None:
    full, _ = fit(tmp_path / "a")
    fit(tmp_path / "b", stop_after=5)
    resumed, summary = fit(tmp_path / "b", resume=True)
    assert summary["steps"] == 12 and resumed.ema.updates == 12
    assert same(resumed.ema.module, full.ema.module)
    assert same(resumed.distiller.student, full.distiller.student)


def test_switching_ema_on_when_resuming_starts_the_average_from_the_checkpoint(tmp_path) -> None:
    fit(tmp_path / "run", stop_after=5, ema=None)
    trainer, summary = fit(tmp_path / "run", resume=True)
    assert trainer.ema.updates == summary["steps"] - 5
    assert "no weight average" in trainer.console.file.getvalue()
