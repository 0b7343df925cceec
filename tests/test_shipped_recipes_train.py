"""Every shipped recipe, shrunk by the rule for its data (``SHRINK``), builds with its real models, taps,
projectors and loss parts and trains two steps through the one Distiller and the one Trainer: finite
logged losses with every term in them, a student that changed, loss parts that trained, are checkpointed
and stay out of the student. What a single recipe adds (a schedule, a memory bank's size) is in
``CHECKS``; what each recipe sets is tested in tests/losses and tests/config."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from distill import teacher_views
from distill.config.build import Built, build, make_trainer
from distill.config.checks import example_batch
from distill.config.load import load_recipe
from distill.schedules import LinearWarmup, weight_at
from distill.train.checkpoint import model_tensors
from helpers import fake_fashion_mnist, recipe_id, shipped_recipes

FM_TRAIN = 48  # fake Fashion-MNIST samples: three steps of 16 to an epoch


@dataclass(frozen=True)
class Shrink:
    """How a recipe of one data family becomes an epoch of three quick steps (the test stops after two,
    before the evaluation, as an interrupted run would)."""

    overrides: Callable[[object, Path], list[str]]  # (the recipe as shipped, a folder) -> key=value
    data: Callable[[], tuple] | None = None  # (train, test) for build(), else the recipe's own
    needs: Callable[[], str | None] = lambda: None  # why it cannot run here, or None


def _common(tmp_path: Path, batch: int) -> list[str]:
    return [f"train.batch_size={batch}", f"train.eval_batch_size={batch}", "train.epochs=1",
            "train.device=cpu", "train.progress=false", "train.log_every=1",
            f"output={tmp_path / 'run'}"]  # fmt: skip


def _random_teacher(recipe) -> list[str]:
    return ["teacher.weights=null"] if recipe.teacher is not None else []


def _fashion_mnist(recipe, tmp_path: Path) -> list[str]:
    return [*_random_teacher(recipe), *_common(tmp_path, 16)]


def _rotten_tomatoes(recipe, tmp_path: Path) -> list[str]:
    # a 2-layer student (cut from the real MiniLM, or MiniLM's first 2 layers); 3 steps of 4 rows of 16
    # tokens to an epoch
    if recipe.student.name == "from_teacher":
        cut = ["student.options.uniform=2"]
    else:
        cut = ["student.options={num_hidden_layers: 2}"]
    return [*_random_teacher(recipe), *cut, "data.train_subset=12", "data.test_subset=4",
            "data.options.max_length=16", *_common(tmp_path, 4)]  # fmt: skip


def _scenes(recipe, tmp_path: Path) -> list[str]:
    # 8 + 4 coloured squares of 64 px in YOLO layout instead of the generated scenes, 1 to a batch
    squares = _squares(tmp_path.parent / "squares")
    return [*_random_teacher(recipe), "data.name=yolo", f"data.root={squares}",
            "data.options={image_size: 64, hyp: {mosaic: 0.0}}",
            *_common(tmp_path, 1)]  # fmt: skip


def _squares(root: Path) -> Path:
    from detection.det_helpers import write_squares

    data_yaml = root / "data.yaml"
    return data_yaml if data_yaml.is_file() else write_squares(root)


def _shakespeare(recipe, tmp_path: Path) -> list[str]:
    # a generated corpus (tests/lm/lm_helpers.py), blocks of 16 characters: 3 steps of 4 blocks
    from lm.lm_helpers import corpus

    root = corpus(tmp_path.parent / "lm_corpus")
    lm = [*_random_teacher(recipe), f"data.root={root}", "data.options.block_size=16",
          "data.train_subset=12", "data.test_subset=4", *_common(tmp_path, 4)]  # fmt: skip
    if recipe.distill.topk_cache is not None:  # a cache of its own, filled by the run
        lm.append(f"distill.topk_cache.dir={tmp_path / 'topk'}")
    if recipe.distill.data_mode is not None:  # prompts fit the 16-character blocks
        lm.append("distill.data_mode.prompt_tokens=8")
    if recipe.student.weights is not None:  # a second stage: another run's student, absent here
        lm.append("student.weights=null")
    return lm


def _needs_minilm() -> str | None:
    from text.text_helpers import real_teacher_available

    if not real_teacher_available():
        return "needs scripts/get_text_data.sh (MiniLM + Rotten Tomatoes)"
    return None


def _needs_ultralytics() -> str | None:
    import importlib.util

    return None if importlib.util.find_spec("ultralytics") else "needs ultralytics"


SHRINK = {
    # 16 x 16 fake images keep the real models' shapes down to the pooled features and stay fast
    "fashion_mnist": Shrink(
        _fashion_mnist, lambda: (fake_fashion_mnist(FM_TRAIN, 0, 16), fake_fashion_mnist(16, 1, 16))
    ),
    "rotten_tomatoes": Shrink(_rotten_tomatoes, needs=_needs_minilm),
    "scenes": Shrink(_scenes, needs=_needs_ultralytics),
    "shakespeare": Shrink(_shakespeare),
}

# recipes whose losses or projectors hold trainable parts (connectors, heads, embeddings, fusions)
WITH_PARTS = {
    *(
        "fashion_mnist/" + m
        for m in "vid ft ofd cwd mgd cc fsp ab ickd crd reviewkd fitnet".split()
    ),
    *("scenes/" + m for m in "cwd fgd fgfi kd mgd".split()),
}
# Fashion-MNIST recipes that train cross-entropy and their method alone (no KD term)
ALONE = "vid ft ofd cwd mgd at sp cc rkd pkt nst fsp ab dkd dist nkd ttm wttm mlkd logit_mse wsld ickd irg"
# per family: the largest weighted term after the two steps, random teacher, epoch 0 (a sane scale)
BOUND = {"fashion_mnist": 1e3}


def _dkd(built: Built, logged: list[dict]) -> None:
    schedule = built.distiller.terms[0].weight  # mdistiller's warm-up, 20 of 240 epochs
    assert isinstance(schedule, LinearWarmup)
    assert (schedule(0.0), schedule(0.25), schedule(3.0)) == (0.0, 0.5, 1.0)


def _crd(built: Built, logged: list[dict]) -> None:
    from distill.losses.crd import CRDLoss

    loss = built.distiller.terms[-1].loss
    assert isinstance(loss, CRDLoss)
    assert loss.memory_student.shape == (FM_TRAIN, 128) and loss.negatives == FM_TRAIN - 1
    assert loss.embed_student.linear.in_features == 32  # student pool
    assert loss.embed_teacher.linear.in_features == 256  # teacher pool


def _reviewkd(built: Built, logged: list[dict]) -> None:
    from distill.losses.reviewkd import ReviewKDLoss

    loss = built.distiller.terms[-1].loss
    assert isinstance(loss, ReviewKDLoss) and len(loss.fusions) == 5
    assert isinstance(built.distiller.terms[0].weight, LinearWarmup)


def _ickd(built: Built, logged: list[dict]) -> None:
    embed = built.distiller.terms[0].loss.embed  # the 1x1 conv + BN embedding, 32 -> 256 channels
    assert (embed.conv.in_channels, embed.conv.out_channels) == (32, 256)


def _kd_hidden(built: Built, logged: list[dict]) -> None:
    # embeddings + 2 layers: three hidden-state pairs feed one logged term
    assert all("hidden_cosine" in r for r in logged), logged


CHECKS: dict[str, Callable[[Built, list[dict]], None]] = {
    "fashion_mnist/dkd": _dkd,
    "fashion_mnist/crd": _crd,
    "fashion_mnist/reviewkd": _reviewkd,
    "fashion_mnist/ickd": _ickd,
    "rotten_tomatoes/kd_hidden": _kd_hidden,
}


def _saved_keys(run: Path) -> set[str]:
    """The model tensors named in the newest ``last`` checkpoint (its header alone)."""
    from safetensors import safe_open

    folder = run / "checkpoints"
    entry = json.loads((folder / "manifest.json").read_text())["last"][0]
    with safe_open(folder / entry["file"], "pt") as f:
        return set(model_tensors(dict.fromkeys(f.keys())))


def _params() -> list:
    return [pytest.param(p, id=recipe_id(p)) for p in shipped_recipes()]


def test_every_shipped_recipe_is_covered():
    families = {recipe_id(p).split("/")[0] for p in shipped_recipes()}
    assert families == set(SHRINK), "add a shrink rule for the new recipe folder"
    names = {recipe_id(p) for p in shipped_recipes()}
    assert WITH_PARTS | set(CHECKS) <= names


@pytest.mark.filterwarnings("error:ofd:UserWarning")  # OFD's teacher taps are pre-ReLU
@pytest.mark.parametrize("path", _params())
def test_shipped_recipe_trains_two_steps(path: Path, tmp_path_factory, monkeypatch) -> None:
    name = recipe_id(path)
    family, method = name.split("/")
    shrink = SHRINK[family]
    if reason := shrink.needs():
        pytest.skip(reason)
    tmp_path = tmp_path_factory.mktemp("recipe")  # next to the others: data shared, written once
    # stored teacher views stay here (only they: the text data is read from the usual cache)
    monkeypatch.setattr(teacher_views, "views_root", lambda: tmp_path / "teacher_views")
    recipe = load_recipe(name, shrink.overrides(load_recipe(name), tmp_path))
    if family == "fashion_mnist" and method in ALONE.split():
        assert [t.loss for t in recipe.distill.terms] == [method]  # cross-entropy + the method
    built = build(recipe, data=shrink.data() if shrink.data else None)
    distiller = built.distiller
    before = {k: p.detach().clone() for k, p in built.student.named_parameters()}  # not BN buffers

    trainer = make_trainer(built, run_dir=tmp_path / "run")
    summary = trainer.fit(stop_after=2)

    assert trainer.global_step == summary["steps"] == 2
    side = distiller.trainable()
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert len(steps) == 2, logged  # log_every=1: one record per step, none skipped as non-finite
    for record in steps:
        # the epoch the step trained at (the record holds the epoch reached after it)
        at = record["epoch"] * (record["step"] - 1) / record["step"]
        assert "skipped_steps" not in record and math.isfinite(record["loss"]), record
        assert ("task" in record) == bool(weight_at(side.task_weight, at)), record
        assert math.isfinite(record.get("task", 0.0)), record
        for term, key in zip(side.terms, side.names, strict=True):
            assert key in record and math.isfinite(record[key]), (key, record)
            assert (record[key] != 0) == bool(weight_at(term.weight, at)), (key, record)
    after = dict(built.student.named_parameters())
    assert any(not torch.equal(before[k], after[k]) for k in before), "the student did not train"

    extra = {k: p for k, p in side.named_parameters() if not k.startswith("student.")}
    assert bool(extra) == (name in WITH_PARTS), sorted(extra)
    trainable = {id(p) for p in distiller.trainable_parameters()}
    for key, p in extra.items():  # they trained in the last step (the trainer keeps the grads)
        assert id(p) in trainable, key
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
    if extra:
        assert any(p.grad.abs().sum() > 0 for p in extra.values())
        saved = _saved_keys(tmp_path / "run")  # the checkpoint holds them
        assert set(extra) <= saved, sorted(set(extra) - saved)
    student_keys = set(built.student.state_dict())  # what a run exports: the student alone
    assert not any(k.startswith(("losses", "projectors")) for k in student_keys)
    assert not any("memory" in k or "fusions" in k for k in student_keys)

    for term in side.terms:  # a loss holds no reference to the student's weights
        assert not any(k.startswith("student.") for k in term.loss.state_dict())

    if family in BOUND:  # after training, every weighted term finite, positive and on a sane scale
        raw = example_batch(built.train_data, recipe.train.batch_size)
        with torch.no_grad():
            step = distiller(distiller.task.split(raw), epoch=0.0)
        assert torch.isfinite(step.loss), step.parts
        for term, key in zip(side.terms, side.names, strict=True):
            value = float(step.parts[key])
            assert math.isfinite(value) and value < BOUND[family], (key, step.parts)
            assert (value > 0) == bool(weight_at(term.weight, 0.0)), (key, step.parts)
    if name in CHECKS:
        CHECKS[name](built, steps)
