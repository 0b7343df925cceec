"""The augmentation-aware teacher cache (distill.cache_views): stored views rebuild exactly, stored outputs
are the teacher's on them, the file is verified, and other settings fill another file."""

import io

import pytest
import torch
from rich.console import Console
from torch import nn

from distill.data.tensor import TensorDataset
from distill.data.views import ViewAugment
from distill.distiller import Distiller, OnlineTeacher, Term
from distill.errors import DistillError
from distill.losses import KDLoss
from distill.tasks import ClassificationTask
from distill.teacher_cache import CachedTeacher
from distill.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
AUG = ViewAugment(resized_crop=0.4, crop_padding=1, flip=True, ops=2, magnitude=8)


class CountingTeacher(nn.Module):
    def __init__(self, seed=7):
        super().__init__()
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 5))
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return self.model(x)


def dataset(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)
    )


def cache(teacher, folder, views=3, topk=0, aug=AUG, seed=0):
    return CachedTeacher(teacher, ClassificationTask(), ["@logits"], aug, views, topk, folder, seed)


def test_a_stored_view_rebuilds_exactly_and_its_outputs_are_the_teachers(tmp_path):
    data, teacher, task = dataset(), CountingTeacher(), ClassificationTask()
    source = cache(teacher, tmp_path)
    source.prepare(data, 16, None, True)
    assert source.filled and teacher.seen == 3 * 60  # each view of each sample once
    store = source.store
    online = OnlineTeacher(teacher, task)
    order = torch.randperm(60, generator=torch.Generator().manual_seed(1)).tolist()
    for epoch in (0, 1):
        for raw in data.loader(24, sampler=order):
            batch = source.view(task.split(raw), float(epoch))
            index, which = batch.extras["index"], batch.extras["view"]
            rebuilt = ViewAugment.apply(data.images[index], store.params[which, index])
            assert torch.equal(batch.inputs, rebuilt)
            got = source.outputs(batch, ["@logits"])["@logits"]
            want = online.outputs(batch, ["@logits"])["@logits"]
            torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)  # float16 storage
    assert not torch.equal(store.choice(0), store.choice(1))  # a new pick of views each epoch


def test_the_pick_of_views_is_a_function_of_seed_and_epoch(tmp_path):
    data, teacher = dataset(), CountingTeacher()
    a, b = cache(teacher, tmp_path), cache(teacher, tmp_path)
    a.prepare(data, 16, None, True)
    b.prepare(data, 24, None, True)  # reused, whatever the batch size: no second fill
    assert teacher.seen == 3 * 60
    assert torch.equal(a.store.choice(4), b.store.choice(4)) and torch.equal(
        a.store.params, b.store.params
    )
    other = cache(teacher, tmp_path, seed=1)
    other.prepare(data, 16, None, True)
    assert not torch.equal(other.store.choice(4), a.store.choice(4))


def test_topk_keeps_the_top_log_probabilities_and_the_rest_mass(tmp_path):
    data, teacher, task = dataset(), CountingTeacher(), ClassificationTask()
    source = cache(teacher, tmp_path, topk=2)
    source.prepare(data, 16, None, True)
    batch = source.view(task.split(next(iter(data.loader(20)))), 0.0)
    got = source.outputs(batch, ["@logits"])["@logits"]
    want = torch.log_softmax(
        OnlineTeacher(teacher, task).outputs(batch, ["@logits"])["@logits"], -1
    )
    top = want.topk(2, -1)
    torch.testing.assert_close(got.gather(1, top.indices), top.values, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(got.exp().sum(-1), torch.ones(20), rtol=1e-3, atol=1e-3)


def test_a_tampered_file_is_refused_and_other_settings_fill_another(tmp_path):
    data, teacher = dataset(), CountingTeacher()
    first = cache(teacher, tmp_path)
    first.prepare(data, 16, None, True)
    folder = first.store.folder
    for change in (
        dict(views=2),
        dict(aug=ViewAugment(resized_crop=0.4, crop_padding=1, flip=True, ops=2, magnitude=5)),
        dict(topk=2),
    ):
        other = cache(teacher, tmp_path, **change)
        other.prepare(data, 16, None, True)
        assert other.store.folder != folder and other.store.fill_seconds is not None
    retrained = CountingTeacher(seed=8)
    moved = cache(retrained, tmp_path)
    moved.prepare(data, 16, None, True)
    assert moved.store.folder != folder and retrained.seen == 3 * 60
    changed = dataset(seed=3)
    fresh = cache(teacher, tmp_path)
    fresh.prepare(changed, 16, None, True)
    assert fresh.store.folder != folder
    path = folder / "views.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DistillError, match="fails its SHA-256 check.*delete"):
        cache(teacher, tmp_path).prepare(data, 16, None, True)


def test_refusals(tmp_path):
    teacher = CountingTeacher()
    with pytest.raises(DistillError, match="view count"):
        cache(teacher, tmp_path, views=0)
    with pytest.raises(DistillError, match="cache_topk"):
        CachedTeacher(teacher, ClassificationTask(), ["@logits", "@other"], AUG, 2, 3, tmp_path)


def test_training_reads_stored_views_and_runs_the_teacher_only_to_fill(tmp_path):
    teacher = CountingTeacher()
    torch.manual_seed(1)
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    distiller = Distiller(student, ClassificationTask(), teacher, [Term(KDLoss(2.0))], 0.5)
    distiller.source = cache(teacher, tmp_path / "views")
    config = TrainConfig(epochs=3, batch_size=20, lr=0.1, progress=False, device="cpu", seed=0)
    trainer = Trainer(
        distiller, dataset(), dataset(20, seed=1), config, run_dir=tmp_path / "run",
        console=Console(file=io.StringIO()),
    )  # fmt: skip
    trainer.fit()
    # setup's example batch (20), 3 views of 60 samples, the validation set once; none per step
    assert teacher.seen == 20 + 3 * 60 + 20


def test_a_recipe_with_cache_views_fills_once_and_reuses(write_recipe, tmp_path, monkeypatch):
    from distill import api
    from helpers import tiny_recipe_dict

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    outs = []
    for name in ("a", "b"):
        recipe = tiny_recipe_dict(
            tmp_path / name,
            teacher={"name": "cnn", "options": {"channels": [8, 16]}},
            distill={"cache_teacher": True, "cache_views": 2, "terms": [{"loss": "kd"}]},
        )
        recipe["data"]["augment"] = {"resized_crop": 0.5, "randaugment": 1}
        out = io.StringIO()
        summary = api.train(
            write_recipe(recipe, f"{name}.yaml"), console=Console(file=out, width=300)
        )
        assert summary["steps"] == 4
        outs.append(out.getvalue())
    assert "teacher views: drawing 2 views of 256 samples" in outs[0]
    assert (
        "teacher views: reusing" in outs[1]
        and len(list((tmp_path / "cache" / "teacher_views").iterdir())) == 1
    )
