"""A finished run reopened: :func:`open_run` gives its recipe, task, data and trained student (and teacher).

Every command that reads a run (``eval``, ``export``, ``qat``, compare's student rows, the demo's
measurements) reopens it here, so they agree on what a run is: the recipe it kept (``recipe.yaml``), the
recipe's data, the student with a checkpoint's weights, and the teacher only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.config.build import (
    build_data,
    build_models,
    data_shape,
    eval_loader,
    prepare_text_data,
    recipe_task,
)
from distill.config.lmvocab import pair_teacher_vocab
from distill.config.load import load_recipe
from distill.config.schema import Recipe
from distill.errors import DistillError, did_you_mean
from distill.tasks import Task
from distill.train.checkpoint import load_student_weights

CHECKPOINTS = ("best", "last")


@dataclass
class Run:
    """A finished run: ``student`` holds ``checkpoint``'s weights (eval mode); ``teacher`` is the recipe's
    frozen teacher when it was asked for and its weights were found (``notes`` says why it is missing)."""

    run_dir: Path
    checkpoint: str
    recipe: Recipe
    task: Task
    train_data: Any
    test_data: Any
    student: nn.Module
    teacher: nn.Module | None = None
    notes: list[str] = field(default_factory=list)

    def test_loader(self) -> Any:
        """The test split in order, in batches of ``train.eval_batch_size``."""
        return eval_loader(self.test_data, self.recipe.train.eval_batch_size)


def run_recipe(run_dir: str | Path) -> Recipe:
    """The recipe a run kept (``RUN_DIR/recipe.yaml``)."""
    path = Path(run_dir) / "recipe.yaml"
    # a file of a run (model.safetensors, recipe.yaml, checkpoints/best-*.safetensors) given for the run
    near = list(Path(run_dir).parents)[:2]
    inside = next((p for p in near if (p / "recipe.yaml").is_file()), None)
    if Path(run_dir).is_file() and inside is not None:
        raise DistillError(
            f"{run_dir} is a file of the run {inside}; give the run folder: {inside}"
        )
    trained = (Path(run_dir) / "model.safetensors").is_file() or (
        Path(run_dir) / "checkpoints"
    ).is_dir()
    if not path.is_file() and trained:
        raise DistillError(
            f"{run_dir} is not a distill run directory the CLI can reopen: a Trainer built in Python "
            "saves weights but no recipe.yaml, so its model cannot be rebuilt; train it with "
            "distill.api.train(Recipe(...)) naming your model as module:function (docs/plugins.md), or "
            f"load {Path(run_dir) / 'model.safetensors'} into a recipe's model with weights:"
        )
    if not path.is_file():
        raise DistillError(
            f"{run_dir} is not a distill run directory (no recipe.yaml); give the folder `distill train` "
            "or distill.train(recipe) wrote (a Trainer built by hand saves weights only: name your model "
            "as module:function in a Recipe, docs/plugins.md)"
        )
    return load_recipe(path)


def open_run(
    run_dir: str | Path,
    checkpoint: str = "best",
    teacher: bool | nn.Module = False,
    data: tuple[Any, Any] | None = None,
) -> Run:
    """Reopen the run in ``run_dir`` with the student's ``checkpoint`` (``best`` or ``last``) weights.

    ``teacher``: ``False`` leaves the teacher out (its weights may have moved since training; a
    ``from_teacher`` student is cut from the teacher's architecture alone); ``True`` loads it, or, when its
    weights file is gone, leaves it out with a note; a module is used as the teacher. ``data``: the
    recipe's ``(train, test)`` splits already built for this student (text: tokenized), else they are built.
    Nothing is trained and no example batch runs.
    """
    if checkpoint not in CHECKPOINTS:
        raise DistillError(
            f"unknown checkpoint {checkpoint!r}.{did_you_mean(checkpoint, CHECKPOINTS)} "
            "Use best or last"
        )
    run_dir = Path(run_dir)
    recipe = run_recipe(run_dir)
    train, test = data or build_data(recipe)
    recipe = pair_teacher_vocab(recipe, train)  # a teacher of another tokenizer: its own length
    notes: list[str] = []
    choice: Any = teacher
    if teacher is True:
        choice, note = _teacher_choice(recipe)
        notes += [note] if note else []
    elif teacher is False:
        choice = "skip"
    with torch.random.fork_rng(devices=[]):  # seeded as in training; the caller's RNG is untouched
        torch.manual_seed(recipe.train.seed)
        student, frozen = build_models(recipe, *data_shape(recipe, train), choice, False)
    if data is None:
        prepare_text_data(recipe, (train, test), student, frozen)
    load_student_weights(run_dir, student, checkpoint)
    if frozen is not None:
        frozen.requires_grad_(False).eval()
    task = recipe_task(recipe)
    return Run(run_dir, checkpoint, recipe, task, train, test, student.eval(), frozen, notes)


def _teacher_choice(recipe: Recipe) -> tuple[str, str | None]:
    """``load`` the recipe's teacher, or ``skip`` it with the reason when its weights file is gone."""
    if recipe.teacher is None:
        return "skip", None
    weights = recipe.teacher.weights
    if weights and not Path(weights).exists():
        return "skip", f"agreement left out: teacher weights {weights} not found"
    return "load", None
