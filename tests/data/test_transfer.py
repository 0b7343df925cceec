"""Transfer sets (data.transfer): batches at the stated ratio, labels only where the recipe keeps them,
the task loss on labelled rows and the terms on all, label counts in the summary, exact resume."""

from __future__ import annotations

import io
import json

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from distill.config.build import build, make_trainer
from distill.config.schema import Recipe
from distill.data.tensor import TensorDataset
from distill.data.transfer import UNLABELLED, TransferSet, labels_per_class_split, make_transfer_set
from distill.distiller import Distiller, Term
from distill.errors import DistillError
from distill.losses.kd import KDLoss
from distill.tasks import classification
from distill.tasks.base import Batch
from distill.tasks.classification import ClassificationTask
from distill.train import Trainer
from distill.train.distributed import DistInfo
from distill.train.sampling import epoch_loader
from helpers import fake_fashion_mnist, tiny_recipe_dict


def joined(n_labelled: int = 20, n_transfer: int = 100, fraction: float | None = 0.25):
    return TransferSet(
        fake_fashion_mnist(n_labelled, 0, size=4),
        fake_fashion_mnist(n_transfer, 1, size=4),
        fraction,
    )


def test_every_training_batch_holds_the_stated_share_of_labelled_rows() -> None:
    data = joined(20, 100, 0.25)
    batches = list(epoch_loader(data, 16, DistInfo(), seed=0, epoch=0))
    # one pass over the 100 transfer rows, 12 per batch (16 - round(0.25 * 16))
    assert len(batches) == 9
    for b in batches:
        labelled = b["label"] != UNLABELLED
        assert len(b["label"]) == 16 and int(labelled.sum()) == 4
        assert bool((b["index"][labelled] < 20).all()) and bool((b["index"][~labelled] >= 20).all())
    seen = torch.cat([b["index"] for b in batches])
    assert set(seen[seen >= 20].tolist()) == set(range(20, 120))  # every transfer row in the epoch
    assert set(seen[seen < 20].tolist()) == set(range(20))  # the labelled set cycles


def test_rows_keep_their_inputs_and_only_labelled_rows_their_labels() -> None:
    labelled, transfer = fake_fashion_mnist(20, 0, size=4), fake_fashion_mnist(100, 1, size=4)
    data = TransferSet(labelled, transfer, 0.5)
    batch = data.batch([3, 25, 0, 119])
    assert batch["label"].tolist() == [
        labelled.labels[3],
        UNLABELLED,
        labelled.labels[0],
        UNLABELLED,
    ]
    assert torch.equal(batch["image"][1], transfer.images[5])
    assert torch.equal(batch["image"][3], transfer.images[99])
    assert batch["index"].tolist() == [3, 25, 0, 119]


def test_the_order_is_the_epochs_shuffle_and_a_resumed_epoch_skips_whole_batches() -> None:
    data = joined(20, 100, 0.25)
    full = list(epoch_loader(data, 16, DistInfo(), seed=3, epoch=2))
    again = list(epoch_loader(data, 16, DistInfo(), seed=3, epoch=2))
    other = list(epoch_loader(data, 16, DistInfo(), seed=3, epoch=3))
    skipped = list(epoch_loader(data, 16, DistInfo(), seed=3, epoch=2, skip_batches=4))
    assert all(torch.equal(a["index"], b["index"]) for a, b in zip(full, again, strict=True))
    assert not torch.equal(full[0]["index"], other[0]["index"])
    assert len(skipped) == len(full) - 4
    assert all(torch.equal(a["index"], b["index"]) for a, b in zip(full[4:], skipped, strict=True))


def test_every_rank_runs_as_many_steps() -> None:
    data = joined(7, 53, 0.3)
    counts = {
        len(epoch_loader(data, 8, DistInfo(rank=r, world_size=3, local_rank=r), 0, 0))
        for r in range(3)
    }
    assert len(counts) == 1


def test_without_a_ratio_batches_are_the_shuffled_order_cut_in_pieces() -> None:
    data = joined(20, 100, None)
    batches = list(epoch_loader(data, 16, DistInfo(), seed=0, epoch=0))
    assert [len(b["index"]) for b in batches] == [16] * 7 + [8]
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(120))


def test_labels_per_class_keeps_the_samples_train_subset_keeps() -> None:
    data = TensorDataset(torch.rand(200, 1, 4, 4), torch.arange(200) % 10, num_classes=10)
    keep, rest = labels_per_class_split(data, 3, seed=5)
    assert torch.bincount(data.labels[keep], minlength=10).tolist() == [3] * 10
    assert torch.equal(keep, data.subset_indices(30, seed=5))  # scratch_scarce's data.train_subset
    assert sorted(keep.tolist() + rest.tolist()) == list(range(200))
    joined_set = make_transfer_set(data, 3, None, 0.5, seed=5)
    assert joined_set.num_labelled == 30 and len(joined_set.transfer) == 170
    with pytest.raises(DistillError, match="class 0 has only 20 training samples; use at most 20"):
        labels_per_class_split(data, 21, seed=0)


def test_an_extra_dataset_joins_the_transfer_set_without_its_labels(tmp_path) -> None:
    train, extra = fake_fashion_mnist(40, 0, size=4), fake_fashion_mnist(30, 1, size=4)
    only_extra = make_transfer_set(train, None, extra, 0.5)
    assert only_extra.num_labelled == 40 and len(only_extra.transfer) == 30
    both = make_transfer_set(train, 2, extra, 0.5, seed=0)  # 20 labelled, 20 + 30 transfer rows
    assert both.num_labelled == 20 and len(both) == 70
    rows = both.batch(list(range(20, 70)))
    assert (rows["label"] == UNLABELLED).all()
    # the extra rows follow the unlabelled ones
    assert torch.equal(rows["image"][20:], extra.images)
    # from a recipe: the training split keeps its labels, 100 Fashion-MNIST images join without theirs
    recipe = tiny_recipe_dict(tmp_path)
    recipe["data"]["transfer"] = {"dataset": {"name": "fashion_mnist", "subset": 100}}
    recipe["teacher"] = {"name": "cnn", "options": {"channels": [4, 8]}}
    recipe["distill"] = {"terms": [{"loss": "kd"}]}
    from distill.config.build import build_data

    train_set, _ = build_data(Recipe.model_validate(recipe))
    assert isinstance(train_set, TransferSet)
    assert (train_set.num_labelled, len(train_set.transfer)) == (256, 100)


def test_the_task_loss_reads_labelled_rows_and_the_terms_every_row() -> None:
    logits = torch.randn(6, 10, requires_grad=True)
    labels = torch.tensor([3, UNLABELLED, 1, UNLABELLED, UNLABELLED, 7])
    task = ClassificationTask()
    batch = Batch(inputs=torch.zeros(6), targets=labels, extras={"labels": labels})
    loss = task.loss({"logits": logits}, batch)
    assert torch.allclose(loss, F.cross_entropy(logits[[0, 2, 5]], labels[[0, 2, 5]]))
    acc = task.batch_metrics({"logits": logits}, batch)["acc"]
    expected = logits[[0, 2, 5]].argmax(1).eq(labels[[0, 2, 5]]).float().mean()
    assert torch.allclose(acc, expected)
    none = Batch(inputs=torch.zeros(2), targets=torch.full((2,), UNLABELLED), extras={})
    zero = task.loss({"logits": logits[:2]}, none)
    assert float(zero.detach()) == 0.0 and zero.requires_grad
    # -1 is the one value meaning "no label": data and task agree on it
    assert classification.UNLABELLED == UNLABELLED
    with pytest.raises(DistillError, match="label -2 is out of range"):
        task.loss({"logits": logits[:1]}, Batch(torch.zeros(1), torch.tensor([-2]), {}))

    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    distiller = Distiller(student, task, teacher=teacher, terms=[Term(KDLoss(2.0))])
    images = torch.rand(6, 1, 4, 4)
    step = distiller(Batch(inputs=images, targets=labels, extras={"labels": labels}))
    with torch.no_grad():
        expected_kd = KDLoss(2.0)(student(images), teacher(images))  # over all six rows
    assert torch.allclose(step.parts["kd"], expected_kd)


def scarce_recipe(tmp_path, name: str = "run", **train) -> Recipe:
    teacher_dir = tmp_path / "teacher"
    if not (teacher_dir / "model.safetensors").exists():
        from distill import api

        api.train(Recipe.model_validate(tiny_recipe_dict(teacher_dir)))
    recipe = tiny_recipe_dict(tmp_path / name)
    recipe["data"]["transfer"] = {"labels_per_class": 2, "labelled_fraction": 0.25}
    recipe["teacher"] = {
        "name": "cnn",
        "options": {"channels": [4, 8]},
        "weights": str(teacher_dir),
    }
    recipe["distill"] = {"terms": [{"loss": "kd"}]}
    recipe["train"].update({"epochs": 2, "checkpoint_every": 1, **train})
    return Recipe.model_validate(recipe)


def test_the_summary_says_how_many_labels_the_student_saw(tmp_path) -> None:
    from distill import api

    api.train(scarce_recipe(tmp_path))
    labels = json.loads((tmp_path / "run" / "summary.json").read_text())["labels"]
    # 256 samples: 20 keep labels, 236 do not; 16 of each 64-row batch are labelled
    steps = json.loads((tmp_path / "run" / "summary.json").read_text())["steps"]
    assert labels == {
        "labelled_samples": 20,
        "unlabelled_samples": 236,
        "labelled_per_step": 16,
        "labelled_rows_seen": 16 * steps,
    }
    assert steps == 2 * 5  # ceil(236 / 48) batches per epoch
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text()
    assert "Labels the student saw: 20 labelled samples, 16 labelled rows a step; 236 more" in card


def test_resume_with_a_transfer_set_is_exact(tmp_path) -> None:
    def fit(name: str, resume: bool = False, stop_after: int | None = None) -> Trainer:
        built = build(scarce_recipe(tmp_path, name))
        trainer = make_trainer(built, console=Console(file=io.StringIO()))
        trainer.fit(resume=resume, stop_after=stop_after)
        return trainer

    full = fit("full")
    fit("cut", stop_after=7)  # mid-way through the second epoch
    resumed = fit("cut", resume=True)
    a, b = full.distiller.student.state_dict(), resumed.distiller.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_cached_teacher_fills_every_row_of_a_transfer_set(tmp_path) -> None:
    recipe = scarce_recipe(tmp_path, "cached")
    recipe.distill.cache_teacher = True
    built = build(recipe)
    trainer = make_trainer(built, console=Console(file=io.StringIO()))
    trainer.prepare()
    assert built.distiller.source.filled
