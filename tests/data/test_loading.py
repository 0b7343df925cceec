"""Loading with worker processes and the lazily decoded image folder: the recipe's ``data.num_workers``
(and friends) reach the DataLoader, decoded items equal the in-memory ones, and a run resumed with
workers trains bit for bit as an uninterrupted one (the sampler, not the workers, fixes the order)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

from distill.config.build import build_data
from distill.config.schema import Recipe
from distill.data import image_folder
from distill.data.base import LoaderOptions, make_loader
from distill.data.folder import ImageFolderDataset
from distill.distiller import Distiller
from distill.tasks import ClassificationTask
from distill.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RECIPE = {"name": "workers", "student": {"name": "mlp"}}


def _pictures(root: Path, n: int = 6, classes: int = 2) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for k in range(n):
                pixels = torch.randint(0, 256, (7, 9, 3), generator=g, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(root / split / f"c{c}" / f"{k}.png")
    return root


def test_loader_options_reach_the_dataloader() -> None:
    assert LoaderOptions().kwargs() == {
        "num_workers": 0,
        "pin_memory": torch.cuda.is_available(),
    }
    options = LoaderOptions(2, pin_memory=False, persistent_workers=True, prefetch_factor=3)
    assert options.kwargs() == {
        "num_workers": 2,
        "pin_memory": False,
        "persistent_workers": True,
        "prefetch_factor": 3,
    }


def test_recipe_sets_the_workers_on_both_splits(tmp_path: Path) -> None:
    root = _pictures(tmp_path / "pics", n=2)
    data = {"name": "image_folder", "root": str(root), "options": {"lazy": True, "image_size": 4}}
    workers = {"num_workers": 2, "prefetch_factor": 4, "pin_memory": False}
    recipe = Recipe.model_validate({**RECIPE, "data": {**data, **workers}})
    train, test = build_data(recipe)
    assert isinstance(train, ImageFolderDataset) and isinstance(test, ImageFolderDataset)
    for split in (train, test):
        loader = make_loader(split, 2, None)
        assert (loader.num_workers, loader.prefetch_factor, loader.pin_memory) == (2, 4, False)
    with pytest.raises(ValueError, match=r"data.persistent_workers=True needs worker processes"):
        Recipe.model_validate({**RECIPE, "data": {**data, "persistent_workers": True}})


def test_lazy_folder_decodes_what_the_eager_one_holds(tmp_path: Path) -> None:
    root = _pictures(tmp_path)
    eager = image_folder(root=str(root), image_size=(5, 6))
    lazy = image_folder(root=str(root), image_size=(5, 6), lazy=True)
    assert isinstance(lazy, ImageFolderDataset) and not hasattr(lazy, "images")
    assert (lazy.num_classes, lazy.in_channels, lazy.image_size) == (2, 3, (5, 6))
    lazy.loader_options = LoaderOptions(num_workers=2)
    order = [5, 0, 11, 3, 7, 1, 2, 9, 4, 10, 6, 8]
    assert lazy.loader(4).num_workers == 2
    batches = list(lazy.loader(4, sampler=order))
    assert [b["index"].tolist() for b in batches] == [order[i : i + 4] for i in (0, 4, 8)]
    images = torch.cat([b["image"] for b in batches])
    assert images.dtype == torch.float32 and torch.equal(images, eager.images[order])
    assert torch.equal(torch.cat([b["label"] for b in batches]), eager.labels[order])
    assert len(lazy.subset(5, seed=1)) == 5


def test_persistent_workers_live_across_epochs(tmp_path: Path) -> None:
    """Each epoch asks for a loader in a new order; the kept loader (and its workers) serves them all,
    and the order is the one asked for each time, also after a pass left half read."""
    data = image_folder(root=str(_pictures(tmp_path)), image_size=4, lazy=True)
    data.loader_options = LoaderOptions(num_workers=2, persistent_workers=True)
    first = make_loader(data, 4, [3, 1, 4, 0, 5])
    assert [b["index"].tolist() for b in first] == [[3, 1, 4, 0], [5]]
    next(iter(first))  # a pass stopped after one batch (a run stopped mid-epoch)
    workers = first._iterator._workers
    second = make_loader(data, 4, [9, 8, 7])
    assert second is first and len(second) == 1
    assert [b["index"].tolist() for b in second] == [[9, 8, 7]]
    assert second._iterator._workers == workers  # the same processes
    assert [b["index"].tolist() for b in make_loader(data, 4, None)][0] == [0, 1, 2, 3]
    assert make_loader(data, 2, None) is not first  # one kept loader per batch size
    small = data.subset(3)
    assert not hasattr(small, "_kept") and small.loader(4) is not first
    assert "_kept" not in pickle.loads(pickle.dumps(data)).__dict__  # workers get no loaders


def _fit(data, run_dir: Path, resume: bool = False, stop_after: int | None = None) -> nn.Module:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    config = TrainConfig(
        epochs=2, batch_size=4, eval_batch_size=12, lr=0.1, device="cpu", progress=False
    )
    trainer = Trainer(
        Distiller(student, ClassificationTask()),
        data,
        None,
        config,
        run_dir=run_dir,
        console=Console(file=io.StringIO()),
    )
    trainer.fit(resume=resume, stop_after=stop_after)
    return student


@pytest.mark.parametrize("persistent", [False, True])
def test_a_run_with_workers_resumes_bit_for_bit(tmp_path: Path, persistent: bool) -> None:
    root = _pictures(tmp_path / "pics")
    data = image_folder(root=str(root), image_size=4, lazy=True)
    data.loader_options = LoaderOptions(num_workers=2, persistent_workers=persistent)
    full = _fit(data, tmp_path / "full")
    _fit(data, tmp_path / "cut", stop_after=4)  # 3 steps an epoch: stopped inside the second epoch
    resumed = _fit(data, tmp_path / "cut", resume=True)
    no_workers = _fit(image_folder(root=str(root), image_size=4, lazy=True), tmp_path / "plain")
    for model in (resumed, no_workers):
        assert all(
            torch.equal(a, b) for a, b in zip(full.parameters(), model.parameters(), strict=True)
        )
