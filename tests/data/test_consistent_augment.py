"""Consistent augmentation: per-sample views (stored parameters rebuild them), mixup/cutmix targets,
draws reproducible from the step's generator, and the recipes that mixing must refuse."""

import io
import json

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from distill.config.load import load_recipe
from distill.data.augment import BatchAugment, image_augment
from distill.data.views import PARAMS, BatchMix, ConsistentAugment, ViewAugment
from distill.errors import ConfigError, DistillError
from distill.tasks import ClassificationTask
from distill.tasks.classification import MixedTargets

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def images(n=8, size=12, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_views_are_rebuilt_exactly_from_their_parameters():
    aug = ViewAugment(resized_crop=0.3, crop_padding=2, flip=True, ops=2, magnitude=9)
    x = images()
    params = aug.draw(len(x), (12, 12), gen(5))
    assert params.shape == (8, PARAMS) and params.dtype == torch.float32
    assert torch.equal(aug(x, gen(5)), ViewAugment.apply(x, params))  # __call__ = draw + apply
    assert torch.equal(ViewAugment.apply(x, params), ViewAugment.apply(x.clone(), params.clone()))
    assert not torch.equal(aug(x, gen(5)), aug(x, gen(6)))
    identity = torch.tensor([[1.0, 0, 0, 0, 1, 0, 1, 1]]).repeat(8, 1)
    torch.testing.assert_close(ViewAugment.apply(x, identity), x, atol=1e-6, rtol=0)


def test_flip_and_whole_pixel_shifts_move_pixels_exactly():
    x = images(4)
    flip = torch.tensor([[-1.0, 0, 0, 0, 1, 0, 1, 1]]).repeat(4, 1)
    torch.testing.assert_close(ViewAugment.apply(x, flip), x.flip(-1), atol=1e-6, rtol=0)
    shift = torch.tensor([[1.0, 0, 2 * 2 / 12, 0, 1, 0, 1, 1]]).repeat(
        4, 1
    )  # read 2 pixels to the right
    want = F.pad(x[..., :, 2:], (0, 2))
    torch.testing.assert_close(ViewAugment.apply(x, shift), want, atol=1e-6, rtol=0)


def test_mixup_mixes_inputs_and_targets_with_one_lambda():
    x, y = images(), torch.arange(8) % 3
    mixed, perm, lam = BatchMix(mixup=0.4)(x, gen(1))
    assert 0.0 < lam < 1.0 and sorted(perm.tolist()) == list(range(8))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])
    task = ClassificationTask()
    batch = task.mix_targets(task.split((mixed, y, torch.arange(8))), perm, lam)
    assert isinstance(batch.targets, MixedTargets) and "labels" not in batch.extras
    soft = lam * F.one_hot(y, 3).float() + (1 - lam) * F.one_hot(y[perm], 3).float()
    torch.testing.assert_close(soft.sum(1), torch.ones(8))  # each soft label is a distribution
    logits = torch.randn(8, 3, generator=gen(2))
    torch.testing.assert_close(
        task.loss({"logits": logits}, batch), F.cross_entropy(logits, soft), rtol=1e-5, atol=1e-6
    )
    metrics = task.batch_metrics({"logits": logits}, batch)
    assert set(metrics) == {"mixed_acc"}  # never reported as accuracy against hard labels
    pred = logits.argmax(1)
    assert float(metrics["mixed_acc"]) == pytest.approx(float(soft[torch.arange(8), pred].mean()))


def test_cutmix_lambda_is_the_area_each_sample_keeps():
    x = torch.arange(1.0, 9.0)[:, None, None, None].expand(8, 1, 16, 16).contiguous()
    for seed in range(5):
        mixed, perm, lam = BatchMix(cutmix=1.0)(x, gen(seed))
        own = (mixed == x).float().mean(dim=(1, 2, 3))
        moved = perm != torch.arange(8)
        assert torch.allclose(own[moved], torch.full_like(own[moved], lam))
        assert torch.equal(mixed[~moved], x[~moved])


def test_mixing_is_reproducible_and_mix_prob_zero_changes_nothing():
    x = images()
    a, b = BatchMix(mixup=0.2, cutmix=1.0)(x, gen(3)), BatchMix(mixup=0.2, cutmix=1.0)(x, gen(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    same, _, lam = BatchMix(mixup=0.2, prob=0.0)(x, gen(3))
    assert lam == 1.0 and torch.equal(same, x)


def test_the_spec_picks_the_augmentation():
    from distill.config.schema import AugmentSpec

    assert isinstance(image_augment(AugmentSpec(crop_padding=2)), BatchAugment)  # unchanged path
    views = image_augment(AugmentSpec(randaugment=2))
    assert isinstance(views, ConsistentAugment) and isinstance(views.views, ViewAugment)
    mix = image_augment(AugmentSpec(crop_padding=2, mixup=0.2))
    assert isinstance(mix.views, BatchAugment) and mix.mix.mixup == 0.2
    assert image_augment(AugmentSpec()) is None


AUG = {"resized_crop": 0.5, "randaugment": 1, "flip": True, "mixup": 0.3, "cutmix": 1.0}


def train(write_recipe, tmp_path, name, **extra):
    from distill import api
    from helpers import tiny_recipe_dict

    recipe = tiny_recipe_dict(tmp_path / name, **extra)
    recipe["data"]["augment"] = AUG
    recipe["train"].update(epochs=2, log_every=1)
    return api.train(write_recipe(recipe), console=Console(file=io.StringIO()))


def test_a_mixed_recipe_trains_logs_mixed_accuracy_and_resumes_exactly(write_recipe, tmp_path):
    from safetensors.torch import load_file

    from helpers import tiny_recipe_dict

    whole = train(write_recipe, tmp_path, "whole")
    assert whole["steps"] == 8
    records = [
        json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    ]
    trains = [r for r in records if r.get("event") == "train"]
    assert trains and all("mixed_acc" in r and "acc" not in r for r in trains)
    recipe = tiny_recipe_dict(tmp_path / "cut")
    recipe["data"]["augment"] = AUG
    recipe["train"].update(epochs=2, log_every=1)
    path = write_recipe(recipe)
    from distill.config.build import build, make_trainer  # fit(stop_after=) cuts the run short

    console = Console(file=io.StringIO())
    make_trainer(build(load_recipe(path)), console=console).fit(stop_after=3)
    make_trainer(build(load_recipe(path)), console=console).fit(resume=True)
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mixing_refuses_terms_that_read_hard_labels(write_recipe, tmp_path):
    from distill import api
    from helpers import tiny_recipe_dict

    recipe = tiny_recipe_dict(
        tmp_path / "dkd",
        teacher={"name": "cnn", "options": {"channels": [8, 16]}},
        distill={"terms": [{"loss": "dkd"}]},
    )
    recipe["data"]["augment"] = {"mixup": 0.2}
    with pytest.raises(DistillError, match="reads hard labels.*mixup"):
        api.train(write_recipe(recipe), console=Console(file=io.StringIO()))
    assert not (tmp_path / "dkd").exists()


@pytest.mark.parametrize(
    ("augment", "distill", "needle"),
    [
        ({"mixup": 0.2}, {"cache_teacher": True, "cache_views": 4}, "blend of its outputs"),
        ({"cutmix": 1.0}, {"cache_teacher": True}, "blend of its outputs"),
        ({"randaugment": 2}, {"cache_teacher": True}, "cache_views: 8"),
        ({}, {"cache_teacher": True, "cache_views": 4}, "data.augment is off"),
        ({"flip": True}, {"cache_views": 4}, "set distill.cache_teacher: true"),
    ],
)
def test_the_schema_refuses_caches_that_cannot_be_exact(
    write_recipe, tmp_path, augment, distill, needle
):
    from helpers import tiny_recipe_dict

    recipe = tiny_recipe_dict(
        tmp_path / "run",
        teacher={"name": "cnn", "options": {"channels": [8, 16]}},
        distill={**distill, "terms": [{"loss": "kd"}]},
    )
    recipe["data"]["augment"] = augment
    with pytest.raises(ConfigError, match=needle):
        load_recipe(write_recipe(recipe))
