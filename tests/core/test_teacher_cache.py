"""distill.cache_teacher: the teacher runs once over the training set, its outputs are read by index."""

import io
import math

import pytest
import torch
from rich.console import Console
from torch import nn

from distill.config.load import load_recipe
from distill.data.tensor import TensorDataset
from distill.distiller import Distiller, OnlineTeacher, Term
from distill.errors import ConfigError, DistillError
from distill.losses import KDLoss
from distill.tasks import ClassificationTask
from distill.teacher_cache import CachedTeacher
from distill.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CountingTeacher(nn.Module):
    """A fixed random CNN-ish teacher counting the samples it has seen."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return self.model(x)


def dataset(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    )


def student():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def test_cached_outputs_are_the_teachers_outputs_for_any_batch():
    data, teacher, task = dataset(), CountingTeacher(), ClassificationTask()
    cache = CachedTeacher(teacher, task, ["@logits"])
    cache.fill(data.loader(40), len(data))  # batches of 40, 40, 16
    assert teacher.seen == 96 and cache.filled
    online = OnlineTeacher(teacher, task)
    order = torch.randperm(96, generator=torch.Generator().manual_seed(3))
    for raw in data.loader(32, sampler=order.tolist()):
        batch = task.split(raw)
        got = cache.outputs(batch, ["@logits"])["@logits"]
        want = online.outputs(batch, ["@logits"])["@logits"]
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # other batch sizes: last bits
    seen = teacher.seen
    no_index = task.split((data.images[:5], data.labels[:5]))
    cache.outputs(no_index, ["@logits"])  # a batch without indices runs the teacher online
    assert teacher.seen == seen + 5


def test_a_cache_not_filled_runs_the_teacher_and_fill_checks_its_input():
    data, teacher, task = dataset(), CountingTeacher(), ClassificationTask()
    cache = CachedTeacher(teacher, task, ["@logits"])
    cache.outputs(task.split(next(iter(data.loader(8)))), ["@logits"])
    assert teacher.seen == 8 and not cache.filled
    with pytest.raises(DistillError, match="no teacher output for 16 of 96"):
        cache.fill(list(data.loader(40))[:2], len(data))  # the last 16 samples never came
    with pytest.raises(DistillError, match="carry each sample's index"):
        cache.fill([(data.images, data.labels)], len(data))
    with pytest.raises(DistillError, match="taps its module 'model.1'"):
        CachedTeacher(teacher, task, ["@logits", "model.1"])


def run(cache_teacher, tmp_path):
    teacher = CountingTeacher()
    distiller = Distiller(student(), ClassificationTask(), teacher, [Term(KDLoss(2.0))], 0.5)
    if cache_teacher:
        distiller.source = CachedTeacher(teacher, distiller.task, distiller.teacher_taps)
    config = TrainConfig(
        epochs=3, batch_size=16, lr=0.1, progress=False, device="cpu", log_every=1, seed=0
    )
    trainer = Trainer(
        distiller,
        dataset(96),
        dataset(32, seed=1),
        config,
        run_dir=tmp_path / f"cache-{cache_teacher}",
        console=Console(file=io.StringIO()),
    )
    return trainer.fit(), teacher.seen


def test_training_with_the_cache_matches_training_online(tmp_path):
    online, seen_online = run(False, tmp_path)
    cached, seen_cached = run(True, tmp_path)
    # online: setup's example batch, 3 epochs of 96, the validation set once (32)
    assert seen_online == 16 + 3 * 96 + 32
    assert seen_cached == 16 + 96 + 32  # the training set once, whatever the number of epochs
    for a, b in zip(online["history"], cached["history"], strict=True):
        assert math.isclose(a["top1"], b["top1"]) and math.isclose(a["nll"], b["nll"], rel_tol=1e-4)


def test_recipes_refuse_a_cache_that_would_be_wrong(write_recipe, tmp_path):
    from helpers import tiny_recipe_dict

    kd = {
        "teacher": {"name": "cnn", "options": {"channels": [8, 16]}},
        "distill": {"cache_teacher": True, "terms": [{"loss": "kd"}]},
    }
    ok = load_recipe(write_recipe(tiny_recipe_dict(tmp_path / "run", **kd)))
    assert ok.distill.cache_teacher
    cases = [
        ({"data": {"name": "fashion_mnist", "augment": {"crop_padding": 2}}}, "augment.crop_padding"),
        ({"distill": {"cache_teacher": True, "terms": [{"loss": "kd", "teacher": "features.1"}]}},
         "taps the module 'features.1'"),
        ({"distill": {"cache_teacher": True}}, "no terms"),
        ({"task": "detection"}, "loader augments"),
    ]  # fmt: skip
    for change, needle in cases:
        recipe = tiny_recipe_dict(tmp_path / "run", **{**kd, **change})
        with pytest.raises(ConfigError, match=needle):
            load_recipe(write_recipe(recipe))


def test_a_cached_recipe_trains_and_reports_the_cache(write_recipe, tmp_path):
    pytest.importorskip("torchvision")
    from distill import api
    from helpers import tiny_recipe_dict

    recipe = tiny_recipe_dict(
        tmp_path / "run",
        teacher={"name": "cnn", "options": {"channels": [8, 16]}},
        distill={"cache_teacher": True, "terms": [{"loss": "kd"}]},
    )
    out = io.StringIO()
    summary = api.train(write_recipe(recipe), console=Console(file=out, width=200))
    assert "caching the teacher's outputs for 256 training samples" in out.getvalue()
    correct = summary["last"]["top1"] * 128 / 100  # a whole number of the 128 test images
    assert summary["steps"] == 4 and correct == pytest.approx(round(correct), abs=1e-6)
