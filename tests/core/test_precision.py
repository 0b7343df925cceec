"""train: precision and speed switches: gradient accumulation, fp16 with a gradient scaler, the bf16
alias, TF32, channels_last, the teacher's dtype, torch.compile, and one host sync per step."""

from __future__ import annotations

import io
import json

import pytest
import torch
from pydantic import ValidationError
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from distill import ClassificationTask, Distiller, DistillError, KDLoss, Term, TrainConfig, Trainer
from distill.losses import FitNetLoss
from distill.train.checkpoint import load_checkpoint
from distill.train.precision import MAX_SCALER_SKIPS, prepare_models


@pytest.fixture(autouse=True)
def one_thread():
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)


def data(n: int = 64, seed: int = 0, shape=(1, 4, 4)) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())


def mlp_distiller(dropout: float = 0.0) -> Distiller:
    """No batch statistics: micro-batches and one large batch give the same gradient."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    student = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 2)
    )
    return Distiller(
        student,
        ClassificationTask(),
        teacher=teacher,
        terms=[Term(KDLoss(2.0), weight=0.5)],
        task_weight=0.5,
    )


def conv_distiller() -> Distiller:
    """Conv student and teacher with a feature term on a named module (a module tap)."""
    torch.manual_seed(0)
    teacher = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 2)
    )
    student = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 2)
    )
    return Distiller(
        student,
        ClassificationTask(),
        teacher=teacher,
        terms=[Term(KDLoss(2.0)), Term(FitNetLoss(), student="1", teacher="1")],
        task_weight=0.5,
    )


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x + 0.1 * torch.randn(x.shape, generator=g)


def train(
    run_dir,
    distiller=None,
    train_data=None,
    resume=False,
    stop_after=None,
    aug=None,
    **cfg,
):
    distiller = distiller or mlp_distiller()
    base = dict(epochs=2, batch_size=16, lr=0.1, progress=False, device="cpu", log_every=1)
    base.update(cfg)
    trainer = Trainer(
        distiller,
        train_data if train_data is not None else data(),
        data(32, 1, train_data.tensors[0].shape[1:] if train_data is not None else (1, 4, 4)),
        TrainConfig(**base),
        run_dir=run_dir,
        augment=aug,
        console=Console(file=io.StringIO()),
    )
    summary = trainer.fit(resume=resume, stop_after=stop_after)
    return distiller, trainer, summary


def close(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], atol=atol) for k in sa)


def equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------ gradient accumulation
def test_four_micro_batches_give_the_update_of_one_batch(tmp_path, monkeypatch):
    sizes: list[int] = []
    original = Distiller.forward

    def spy(self, batch, *args, **kwargs):
        sizes.append(len(batch))
        return original(self, batch, *args, **kwargs)

    whole, _, one = train(tmp_path / "one", epochs=1)
    monkeypatch.setattr(Distiller, "forward", spy)
    split, _, four = train(tmp_path / "four", epochs=1, grad_accum_steps=4)
    assert set(sizes) == {4}  # batch_size is the optimizer step's batch: 16 = 4 micro-batches of 4
    assert one["steps"] == four["steps"] == 4  # the schedule counts optimizer steps
    assert not equal(whole.student, mlp_distiller().student)  # it trained
    assert close(split.student, whole.student)


def test_accumulation_resumes_bit_exact_with_a_short_last_step(tmp_path):
    # 40 items, 16 a step in micro-batches of 8: 5 micro-batches an epoch, the third step takes one
    cfg = dict(grad_accum_steps=2, train_data=data(40), aug=augment)
    full, _, summary = train(tmp_path / "a", mlp_distiller(0.3), **cfg)
    assert summary["steps"] == 6
    _, _, stopped = train(tmp_path / "b", mlp_distiller(0.3), stop_after=4, **cfg)
    assert stopped["steps"] == 4
    _, last = load_checkpoint(tmp_path / "b" / "checkpoints", "last")
    assert (last["global_step"], last["epoch"], last["epoch_step"]) == (4, 1, 1)
    resumed, _, summary = train(tmp_path / "b", mlp_distiller(0.3), resume=True, **cfg)
    assert summary["steps"] == 6
    assert equal(resumed.student, full.student)


def test_batch_size_must_split_into_the_micro_batches():
    with pytest.raises(ValidationError, match="grad_accum_steps=3"):
        TrainConfig(batch_size=16, grad_accum_steps=3)


# --------------------------------------------------------------------- precision and scaler
def test_bf16_stays_an_alias_of_precision_bf16():
    assert TrainConfig(bf16=True).amp == "bf16"
    assert TrainConfig(precision="bf16").amp == "bf16"
    assert TrainConfig().amp == "fp32"
    with pytest.raises(ValidationError, match="bf16: true and precision: fp16"):
        TrainConfig(bf16=True, precision="fp16")


def test_fp16_autocast_with_a_scaler_trains_and_resumes_bit_exact(tmp_path, monkeypatch):
    dtypes = []
    original = ClassificationTask.forward

    def spy(self, model, inputs):
        out = original(self, model, inputs)
        dtypes.append(out["logits"].dtype)
        return out

    monkeypatch.setattr(ClassificationTask, "forward", spy)
    # an overflow at step 2 (call 3; the example batch is call 1) lowers the scale to 2**15
    full, trainer, summary = train(
        tmp_path / "a", inf_distiller(lambda n: n == 3), precision="fp16"
    )
    assert torch.float16 in dtypes  # the forward really ran under fp16 autocast
    assert trainer.scaler_skipped == 1 and trainer.scaler.get_scale() == 2.0**15
    assert all(p.dtype == torch.float32 for p in full.student.parameters())
    assert summary["steps"] == 8 and torch.isfinite(torch.tensor(summary["last"]["nll"]))

    _, _, _ = train(tmp_path / "b", inf_distiller(lambda n: n == 3), precision="fp16", stop_after=3)
    _, last = load_checkpoint(tmp_path / "b" / "checkpoints", "last")
    assert last["scaler"]["scale"] == 2.0**15 and last["scaler_skipped"] == 1
    resumed_scale = []
    original_resume = Trainer._resume

    def check(self):
        original_resume(self)
        resumed_scale.append(self.scaler.get_scale())

    monkeypatch.setattr(Trainer, "_resume", check)
    resumed, again, _ = train(
        tmp_path / "b", inf_distiller(lambda n: False), precision="fp16", resume=True
    )
    assert resumed_scale == [2.0**15]  # a fresh scaler would start at 2**16
    assert again.scaler_skipped == 1
    assert equal(resumed.student, full.student)


class InfGradient(nn.Module):
    """Identity whose backward turns the gradient to inf on chosen calls (the loss stays finite)."""

    def __init__(self, bad_calls):
        super().__init__()
        self.bad_calls, self.calls = bad_calls, 0

    def forward(self, x):
        self.calls += 1
        if self.training and self.bad_calls(self.calls):
            x = x + 0.0
            x.register_hook(lambda g: g * float("inf"))
        return x


def inf_distiller(bad_calls) -> Distiller:
    d = mlp_distiller()
    d.student.insert(2, InfGradient(bad_calls))
    return d


def test_fp16_overflow_is_skipped_by_the_scaler_not_stopped(tmp_path):
    # the example batch (prepare) is call 1; the first training step is call 2
    d, trainer, summary = train(
        tmp_path, inf_distiller(lambda n: n == 2), epochs=1, precision="fp16"
    )
    assert summary["steps"] == 4
    assert trainer.scaler_skipped == 1 and trainer.skipped_steps == 0
    assert trainer.scaler.get_scale() == 2.0**15  # lowered once from 2**16
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert not [e for e in events if e.get("event") == "nonfinite" or "nonfinite" in e.values()]


def test_fp32_inf_gradient_still_stops(tmp_path):
    with pytest.raises(DistillError, match="gradient norm became (inf|nan) at step 1 "):
        train(tmp_path, inf_distiller(lambda n: n == 2), epochs=1)


def test_fp16_gradients_that_stay_inf_end_in_on_nonfinite(tmp_path):
    with pytest.raises(
        DistillError, match=f"gradient norm became (inf|nan) at step {MAX_SCALER_SKIPS + 1} "
    ):
        train(
            tmp_path,
            inf_distiller(lambda n: n > 1),
            train_data=data(64),
            batch_size=2,
            epochs=1,
            precision="fp16",
        )


# ------------------------------------------------------------------------- speed switches
def test_teacher_dtype_casts_the_weights_and_hands_float32_to_the_losses(tmp_path, monkeypatch):
    seen = []
    original = KDLoss.forward

    def spy(self, student, teacher, *args, **kwargs):
        seen.append(teacher.dtype)
        return original(self, student, teacher, *args, **kwargs)

    monkeypatch.setattr(KDLoss, "forward", spy)
    d, _, summary = train(tmp_path, teacher_dtype="bfloat16", epochs=1)
    assert all(p.dtype == torch.bfloat16 for p in d.teacher.parameters())
    assert seen and set(seen) == {torch.float32}
    assert "agreement" in summary["last"]  # evaluation runs the half-precision teacher too


def test_channels_last_models_and_batches(tmp_path, monkeypatch):
    layouts = []

    def record(module, args):
        if module.training:  # training steps (not the example batch or the evaluation)
            layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))

    images = data(32, 0, (3, 4, 4))
    reference, _, _ = train(tmp_path / "a", conv_distiller(), train_data=images, epochs=1)
    d = conv_distiller()
    d.student[0].register_forward_pre_hook(record)
    d, _, _ = train(tmp_path / "b", d, train_data=images, epochs=1, channels_last=True)
    assert d.student[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert d.teacher[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert layouts == [True, True]  # both training batches
    assert close(d.student, reference.student, atol=1e-5)  # a layout, not other arithmetic


def test_tf32_is_set_on_cuda_only():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        d = mlp_distiller()
        prepare_models(d, TrainConfig(tf32=True), torch.device("cpu"))
        assert not torch.backends.cuda.matmul.allow_tf32
        prepare_models(d, TrainConfig(tf32=True), torch.device("cuda"))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_compile_wires_torch_compile_and_keeps_module_taps(tmp_path, monkeypatch):
    """The real dynamo trace with taps (forward hooks); the aot_eager backend spares the C++ build that
    inductor needs on a CPU (half a minute for even a tiny model)."""
    torch._dynamo.reset()
    compiled = []
    original = nn.Module.compile

    def cheap(self, *args, **kwargs):
        compiled.append(type(self).__name__)
        return original(self, backend="aot_eager")

    monkeypatch.setattr(nn.Module, "compile", cheap)
    images = data(32, 0, (3, 4, 4))
    reference, _, _ = train(tmp_path / "a", conv_distiller(), train_data=images, epochs=1)
    d, _, summary = train(
        tmp_path / "b", conv_distiller(), train_data=images, epochs=1, compile=True
    )
    assert compiled == ["Sequential", "Sequential"]  # student and teacher
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert list(d.student.state_dict()) == list(reference.student.state_dict())  # names unchanged
    assert close(d.student, reference.student, atol=1e-5)  # the fitnet term still got its taps
    torch._dynamo.reset()


# ------------------------------------------------------------------------------ host syncs
def test_a_step_syncs_with_the_host_once_for_its_verdict(tmp_path, monkeypatch):
    """The step's only sync is the fused non-finite verdict: metrics stay tensors until a logging step,
    and on the CPU the classification loss's kernel checks the labels (no host read of its own)."""
    calls: list[str] = []
    inside = [False]

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            if inside[0]:
                calls.append(name)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        counting(name)
    step = Trainer._train_step

    def watched(self, *args, **kwargs):
        inside[0] = True
        try:
            return step(self, *args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(Trainer, "_train_step", watched)
    _, _, summary = train(tmp_path, epochs=1, log_every=1000, grad_accum_steps=2)
    assert summary["steps"] == 4
    # per step: 1 verdict (2 micro-batches, no label check read on the CPU)
    assert calls == ["tolist"] * 4
