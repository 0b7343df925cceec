"""The shortcuts a training step takes to cost less than it did give the same results: the loss total
without a zero to start from, a weight of 1 without its multiplication, the one-process non-finite check
through a sum, the teacher's taps built once, and the in-memory loader without torch's iterator."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from distill.data.tensor import InMemoryLoader, TensorDataset, identity_collate
from distill.distiller import Distiller, OnlineTeacher, Term, _add, _weighted
from distill.losses import KDLoss
from distill.tasks import ClassificationTask
from distill.train.distributed import DistInfo
from distill.train.nonfinite import nonfinite

INF, NAN = float("inf"), float("nan")


def test_nonfinite_verdict_on_one_process_names_the_bad_value():
    one = DistInfo()
    finite, big = torch.tensor(1.5), torch.tensor(3e38)
    assert nonfinite(finite, torch.tensor(0.25), one) == (False, False)
    # both finite, their sum overflows: still a good step
    assert nonfinite(big, big, one) == (False, False)
    assert nonfinite(torch.tensor(INF), finite, one) == (True, False)
    assert nonfinite(finite, torch.tensor(NAN), one) == (False, True)
    assert nonfinite(torch.tensor(NAN), torch.tensor(-INF), one) == (True, True)
    # a loss that needs gradients, as the step's is
    assert nonfinite(finite.clone().requires_grad_(), torch.tensor(2.0), one) == (False, False)


def test_total_starts_from_the_first_part_in_float32():
    half = torch.tensor(0.1, dtype=torch.bfloat16)
    assert _add(None, half).dtype == torch.float32
    assert _add(None, half).item() == (torch.zeros((), dtype=torch.float32) + half).item()
    full = torch.tensor(0.3)
    assert _add(None, full) is full  # float32 (or float64) as it is
    assert torch.equal(_add(_add(None, half), full), torch.zeros(()) + half + full)
    assert _weighted(1.0, full) is full
    assert torch.equal(_weighted(0.5, full), 0.5 * full)


def _nets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    return teacher, student


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 3, 2, 2, generator=g), torch.randint(0, 3, (5,), generator=g)


def test_distiller_total_is_the_weighted_sum_in_float32_also_under_autocast():
    teacher, student = _nets()
    task = ClassificationTask()
    terms = [Term(KDLoss(2.0)), Term(KDLoss(4.0), weight=0.5, name="soft")]
    distiller = Distiller(student, task, teacher=teacher, terms=terms, task_weight=1.0)
    batch = task.split(_batch())
    step = distiller(batch)
    expected = torch.zeros((), dtype=torch.float32)
    for part in step.parts.values():
        expected = expected + part
    assert torch.equal(step.loss, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert distiller(batch).loss.dtype == torch.float32
    nothing = Distiller(student, task, teacher=teacher, terms=[Term(KDLoss(), weight=0.0)])
    nothing_step = nothing(batch)  # task weight 1, term weight 0: the parts still add up
    assert torch.equal(nothing_step.loss, nothing_step.parts["task"] + nothing_step.parts["kd"])
    step.loss.backward()  # the graph reaches the student through the unweighted parts
    assert all(p.grad is not None for p in student.parameters())


def test_teacher_taps_follow_the_taps_asked_for():
    teacher, _ = _nets()
    source = OnlineTeacher(teacher, ClassificationTask())
    batch = ClassificationTask().split(_batch())
    first = source.outputs(batch, ["@logits", "1"])
    assert set(first) == {"@logits", "1"} and first["1"].shape == (5, 8)
    other = source.outputs(batch, ["@logits", "2"])  # other taps: other hooks, none left behind
    assert set(other) == {"@logits", "2"}
    assert torch.equal(other["2"], torch.relu(first["1"]))
    assert set(source.outputs(batch, ["@logits"])) == {"@logits"}
    assert not any(m._forward_hooks for m in teacher.modules())


def _dataset(n: int = 37) -> TensorDataset:
    g = torch.Generator().manual_seed(2)
    return TensorDataset(
        torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    )


def test_in_memory_loader_gives_torchs_batches_and_random_state():
    data = _dataset()
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
    fast = data.loader(5, sampler=sampler)
    assert isinstance(fast, InMemoryLoader) and isinstance(fast, DataLoader) and len(fast) == 8
    plain = DataLoader(data, batch_size=5, sampler=sampler, collate_fn=identity_collate)
    torch.manual_seed(7)
    ours = list(fast)
    after_ours = torch.rand(3)
    torch.manual_seed(7)
    theirs = list(plain)
    after_theirs = torch.rand(3)
    assert torch.equal(after_ours, after_theirs)  # the same draw when a pass starts
    assert len(ours) == len(theirs) == 8
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    generator = torch.Generator().manual_seed(4)
    shuffled = data.loader(6, shuffle=True, drop_last=True, generator=generator)
    assert [len(b["index"]) for b in shuffled] == [6] * 6
    assert len(torch.cat([b["index"] for b in shuffled]).unique()) == 36


def test_getitems_still_wraps_negative_indices():
    data = _dataset(10)
    items = data.__getitems__([-1, 0, -10])
    assert items.batch["index"].tolist() == [9, 0, 0]
    assert torch.equal(items.batch["image"][0], data.images[9])
    from_tensor = data.__getitems__(torch.tensor([-2, 3]))
    assert from_tensor.batch["index"].tolist() == [8, 3]


def test_logged_sums_are_the_one_by_one_sums():
    from distill.train.logging import add_metrics, read_metrics

    g = torch.Generator().manual_seed(5)
    steps = [{k: torch.rand((), generator=g) * 10 for k in ("loss", "task", "kd", "acc")}]
    steps += [dict(steps[0]) for _ in range(2)]
    steps += [
        {k: torch.rand((), generator=g) for k in ("loss", "task", "kd", "acc")} for _ in range(5)
    ]
    steps.append({k: steps[0][k] for k in ("acc", "kd", "task", "loss")})  # same keys, other order
    steps.append({"loss": torch.tensor(1.0), "extra": 2.5})  # a new key, a float
    fused: dict = {}
    plain: dict = {}
    for values in steps:
        fused = add_metrics(fused, values)
        for k, v in values.items():
            plain[k] = plain[k] + v if k in plain else v
    assert list(fused) == list(plain)
    for k in plain:
        assert float(fused[k]) == float(plain[k])  # bit for bit: the same float32 additions
    assert steps[0]["loss"].item() == steps[1]["loss"].item()  # the step's tensors are not changed
    assert read_metrics(plain) == {k: float(v) for k, v in plain.items()}
    counts = {"acc": torch.tensor(0.5), "tokens": torch.tensor(2**40 + 1)}  # an int: read as is
    assert read_metrics(counts) == {"acc": 0.5, "tokens": float(2**40 + 1)}


def test_total_norm_told_the_gradients_are_uniform_is_get_total_norm():
    from distill.train.step import total_norm

    g = torch.Generator().manual_seed(6)
    grads = [torch.randn(5, 3, generator=g), torch.randn(4, generator=g)]
    assert torch.equal(total_norm(grads, True), torch.nn.utils.get_total_norm(grads))
    mixed = [grads[0], grads[1].double()]
    assert torch.equal(total_norm(mixed, False), torch.nn.utils.get_total_norm(mixed))


def _reference_cross_entropy(logits, targets, smoothing):
    """The checked path's result: labelled rows only, 0 for a batch without any."""
    keep = targets != -1
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits[keep], targets[keep], label_smoothing=smoothing)


def test_cross_entropy_on_cpu_without_the_check_gives_the_checked_result():
    from distill.tasks.classification import checked_cross_entropy

    torch.manual_seed(0)
    for labels, smoothing in (
        ([0, 1, 2, 1], 0.0),
        ([0, 1, 2, 1], 0.1),
        ([0, -1, 2, -1], 0.0),  # transfer rows: the kernel refuses -1, the checked path drops them
        ([-1, -1, -1, -1], 0.1),
    ):
        logits = torch.randn(4, 3, requires_grad=True)
        mine = checked_cross_entropy(logits, torch.tensor(labels), smoothing, "fix")
        (grad,) = torch.autograd.grad(mine, logits)
        twin = logits.detach().clone().requires_grad_()
        ref = _reference_cross_entropy(twin, torch.tensor(labels), smoothing)
        (ref_grad,) = torch.autograd.grad(ref, twin)
        assert torch.equal(mine, ref) and torch.equal(grad, ref_grad), labels


def test_cross_entropy_on_cpu_still_names_a_bad_label():
    """-100 is torch's default ignore_index: here it is a bad label like any other."""
    import pytest

    from distill.errors import DistillError
    from distill.tasks.classification import checked_cross_entropy

    logits = torch.randn(3, 4)
    for bad in (4, 7, -100, -2):
        with pytest.raises(DistillError, match=f"label {bad} is out of range .* 4 classes; FIX"):
            checked_cross_entropy(logits, torch.tensor([0, bad, 1]), 0.0, "FIX")


def test_cpu_optimizers_take_the_foreach_update_with_the_loops_numbers():
    """The multi-tensor update distill asks for on the CPU gives the per-parameter loop's weights to
    the bit, for every optimizer it is asked for."""
    import inspect

    import pytest

    from distill.train.config import TrainConfig
    from distill.train.optim import _named_optimizer

    chosen = []
    for name in ("sgd", "adamw", "adam", "nadam", "radam", "adamax", "rmsprop", "adagrad"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(64, 3))
        twin = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(64, 3))
        twin.load_state_dict(model.state_dict())
        cfg = TrainConfig(optimizer=name, lr=0.05, weight_decay=5e-4, momentum=0.9)
        fast = _named_optimizer(cfg, [{"params": list(model.parameters()), "weight_decay": 5e-4}])
        if not fast.defaults.get("foreach"):
            continue
        chosen.append(name)
        accepted = inspect.signature(type(fast).__init__).parameters
        loop_kwargs = {k: v for k, v in fast.defaults.items() if k in accepted}
        loop = type(fast)(
            [{"params": list(twin.parameters()), "weight_decay": 5e-4}],
            **{**loop_kwargs, "foreach": False},
        )
        for _ in range(5):
            x = torch.randn(4, 1, 6, 6)
            for net, opt in ((model, fast), (twin, loop)):
                opt.zero_grad()
                net(x).square().mean().backward()
                opt.step()
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(a, b), name
    assert "sgd" in chosen and "adamw" in chosen
    if len(chosen) < 2:
        pytest.fail("no optimizer took the foreach update")
