"""Resume after the awkward kills: between a re-save's rename and its manifest update, before the first
checkpoint, and with the manifest deleted. Each resumed run equals an uninterrupted one, and
``metrics.jsonl`` holds every step and evaluation once."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from distill.distiller import Distiller
from distill.tasks import ClassificationTask
from distill.train import TrainConfig, Trainer
from distill.train import checkpoint_store as ck

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 64 samples / batch 16: 4 steps per epoch, 12 in all
CONFIG = dict(
    epochs=3, batch_size=16, eval_batch_size=32, lr=0.1, device="cpu", progress=False, log_every=1
)


class Crash(Exception):
    pass


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())


def _fit(run_dir, resume=False, stop_after=None, **cfg):
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    out = io.StringIO()
    trainer = Trainer(
        Distiller(student, ClassificationTask()),
        _data(64, 0),
        _data(32, 1),
        TrainConfig(**{**CONFIG, **cfg}),
        run_dir=run_dir,
        console=Console(file=out, width=200),
    )
    summary = trainer.fit(resume=resume, stop_after=stop_after)
    return student, summary, out.getvalue()


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def _logged(run_dir, event: str) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["event"] == event]


def test_a_kill_inside_the_save_after_evaluation_resumes_exactly(tmp_path, monkeypatch):
    """checkpoint_every divides the epoch: ``last`` is saved at step 4, then again after the evaluation
    with the new history. A kill between that second file's rename and the manifest update must leave a
    resumable run even with one kept checkpoint."""
    cfg = dict(checkpoint_every=2, keep_checkpoints=1)
    full, full_summary, _ = _fit(tmp_path / "full", **cfg)

    manifests = []
    original = ck.write_json

    def killed_at_the_fourth_manifest(path, data):
        manifests.append(data)  # last-2, last-4, best-4, then last-4 again after the evaluation
        if len(manifests) == 4:
            raise Crash
        original(path, data)

    monkeypatch.setattr(ck, "write_json", killed_at_the_fourth_manifest)
    with pytest.raises(Crash):
        _fit(tmp_path / "cut", **cfg)
    monkeypatch.undo()
    assert manifests[3]["last"][0]["step"] == 4

    resumed, summary, out = _fit(tmp_path / "cut", resume=True, **cfg)
    assert "resumed" in out and "step 4" in out
    assert _same(resumed, full)
    assert summary["history"] == full_summary["history"]
    assert summary["best"] == full_summary["best"]
    assert _logged(tmp_path / "cut", "train") == list(range(1, 13))
    assert _logged(tmp_path / "cut", "eval") == [4, 8, 12]  # the evaluation at step 4 once


def test_a_kill_before_the_first_checkpoint_logs_each_step_once(tmp_path, monkeypatch):
    full, _, _ = _fit(tmp_path / "full")
    original = Trainer._train_step

    def crash(self, *args, **kwargs):
        if self.global_step == 3:  # steps 1-3 are logged; the first checkpoint comes at step 4
            raise Crash
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_step", crash)
    with pytest.raises(Crash):
        _fit(tmp_path / "cut")
    monkeypatch.undo()
    assert _logged(tmp_path / "cut", "train") == [1, 2, 3]

    resumed, _, _ = _fit(tmp_path / "cut", resume=True)
    assert _same(resumed, full)
    assert _logged(tmp_path / "cut", "train") == list(range(1, 13))


def test_a_deleted_manifest_resumes_from_the_newest_checkpoint(tmp_path):
    full, full_summary, _ = _fit(tmp_path / "full")
    _fit(tmp_path / "cut", stop_after=6)
    (tmp_path / "cut" / "checkpoints" / "manifest.json").unlink()

    resumed, summary, out = _fit(tmp_path / "cut", resume=True)
    assert "was missing" in out and "step 6" in out  # not a silent restart from step 1
    assert _same(resumed, full) and summary["history"] == full_summary["history"]
    assert _logged(tmp_path / "cut", "train") == list(range(1, 13))
    manifest = json.loads((tmp_path / "cut" / "checkpoints" / "manifest.json").read_text())
    assert manifest["last"][0]["step"] == 12


def test_stopping_right_after_a_checkpoint_writes_no_second_copy(tmp_path):
    _fit(tmp_path / "cut", stop_after=6, checkpoint_every=2)
    names = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").glob("last-*"))
    assert names == ["last-00000004-1.safetensors", "last-00000006.safetensors"]


def test_a_kill_during_the_final_evaluation_keeps_it_in_the_history(tmp_path, monkeypatch):
    """A checkpoint at the run's last step, taken before the final evaluation, would count as finished
    on resume and the evaluation would be lost: that step is saved after it."""
    full, full_summary, _ = _fit(tmp_path / "full", checkpoint_every=2)
    original = Trainer.evaluate

    def crash(self):
        if self.global_step == 12:
            raise Crash
        return original(self)

    monkeypatch.setattr(Trainer, "evaluate", crash)
    with pytest.raises(Crash):
        _fit(tmp_path / "cut", checkpoint_every=2)
    monkeypatch.undo()

    resumed, summary, _ = _fit(tmp_path / "cut", resume=True, checkpoint_every=2)
    assert _same(resumed, full)
    assert summary["history"] == full_summary["history"] and len(summary["history"]) == 3
    assert _logged(tmp_path / "cut", "eval") == [4, 8, 12]
