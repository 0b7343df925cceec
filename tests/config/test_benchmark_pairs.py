"""The shipped recipe pairs that docs/benchmarks/kd_recipes.md compares stay fair comparisons: the
label-scarce scratch student gets as many optimizer steps of as many labelled rows as the KD student, the
patient full-label KD student trains with its scratch baseline's schedule and augmentation, and the tuning
study scores its trials at the schedule its best recipe is trained with."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from distill.config.load import load_recipe
from distill.data.tensor import TensorDataset
from distill.data.transfer import TransferSet

FASHION_MNIST_TRAIN = 60_000


def _images(n: int) -> TensorDataset:
    return TensorDataset(torch.zeros(n, 1, 1, 1), torch.zeros(n, dtype=torch.long), num_classes=10)


def test_scarce_scratch_trains_as_many_steps_of_labelled_rows_as_kd():
    kd = load_recipe("fashion_mnist/kd_scarce")
    scratch = load_recipe("fashion_mnist/scratch_scarce")
    labelled = kd.data.transfer.labels_per_class * 10
    assert scratch.data.train_subset == labelled  # the same 1,000 labels (same seed)
    data = TransferSet(
        _images(labelled),
        _images(FASHION_MNIST_TRAIN - labelled),
        kd.data.transfer.labelled_fraction,
    )
    kd_steps = kd.train.epochs * len(data.plan(list(range(len(data))), kd.train.batch_size))
    scratch_steps = scratch.train.epochs * math.ceil(labelled / scratch.train.batch_size)
    assert data.labelled_rows(kd.train.batch_size) == scratch.train.batch_size
    assert scratch_steps == kd_steps, (scratch_steps, kd_steps)


def test_tune_trials_train_the_schedule_the_best_recipe_trains():
    base = load_recipe("fashion_mnist/kd_tune")
    trial = load_recipe("fashion_mnist/kd_tune", base.tune.overrides)
    assert trial.train == base.train
    assert trial.data.train_subset == base.data.train_subset
    assert base.tune.validation > 0  # scored on training images held out, never the test split


def test_patient_pair_shares_schedule_data_and_augmentation_with_its_scratch_baseline():
    kd = load_recipe("fashion_mnist/kd_long")
    scratch = load_recipe("fashion_mnist/scratch_long")
    # epochs, warm-up, batch, optimizer, schedule, seed; lr and weight decay are each arm's own best
    # (test_patient_pair_arms_keep_their_best_validation_lr_and_weight_decay)
    tuned = {"lr": scratch.train.lr, "weight_decay": scratch.train.weight_decay}
    assert kd.train.model_copy(update=tuned) == scratch.train
    assert kd.data == scratch.data  # the same images and the same (no) augmentation
    assert kd.student == scratch.student
    assert scratch.teacher is None and not scratch.distill.terms
    assert kd.teacher.weights == "runs/fashion_mnist-teacher_strong"  # the cached 15-epoch teacher
    assert kd.train.epochs >= 2 * load_recipe("fashion_mnist/scratch").train.epochs  # patient


def test_patient_pair_arms_keep_their_best_validation_lr_and_weight_decay():
    """Both arms got the same lr / weight-decay grid on the validation split; each recipe ships the grid
    point its own arm scored best on (a scratch baseline left at KD's settings flatters KD)."""
    probes = Path(__file__).resolve().parents[2] / "docs/benchmarks/kd_recipes/full_probes.jsonl"
    rows = [json.loads(line) for line in probes.read_text().splitlines() if line.strip()]
    for arm, name in (("scratch", "scratch_long"), ("kd", "kd_long")):
        grid = [r for r in rows if r.get("grid", {}).get("arm") == arm]
        assert len(grid) >= 4, (arm, len(grid))
        assert {(r["grid"]["lr"], r["grid"]["weight_decay"]) for r in grid} == {
            (r["grid"]["lr"], r["grid"]["weight_decay"]) for r in rows if "grid" in r
        }  # the same grid for both arms
        best = max(grid, key=lambda r: r["top1"])["grid"]
        train = load_recipe(f"fashion_mnist/{name}").train
        assert (train.lr, train.weight_decay) == (best["lr"], best["weight_decay"]), name
