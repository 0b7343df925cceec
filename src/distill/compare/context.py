"""What every pipeline of a comparison shares: the recipe, the data, the teacher, and the models made so
far (a pipeline asks for another's model, e.g. ``student-kd-int8`` for ``student-kd``'s, and gets it made
once)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from distill.config.build import (
    build,
    build_data,
    build_teacher,
    data_shape,
    eval_loader,
)
from distill.config.checks import example_batch
from distill.config.schema import Recipe
from distill.data.base import TextData
from distill.models import count_parameters
from distill.registry import Registry
from distill.tasks.base import TeacherPredictions

# the pipelines by name, registered by distill.compare.pipelines (which needs Context, so it lives here)
PIPELINES: Registry[Any] = Registry("pipeline")


@dataclass
class Produced:
    """A pipeline's result: the model to measure (a torch module, or an onnxruntime wrapper) and its row label.

    ``params``/``size_bytes`` are given when the module cannot tell them itself (an ONNX file on disk).
    """

    model: nn.Module
    name: str
    runtime: str = "torch"
    precision: str = "float32"
    params: int | None = None
    size_bytes: int | None = None
    artefact: Path | None = None


class Context:
    """The KD recipe built once: data, task, frozen teacher, one test input, and the pipelines' products.

    ``example`` is one input without the batch dimension (what the latency harness repeats): a tensor, or
    for models with named inputs (text) a dict of ``(T,)`` tensors, ``T`` the data's ``max_length``.
    ``named_inputs`` says which; ``large_batch`` is the second batch size timed (256 for one tensor input,
    64 for sequences of ``max_length`` tokens).
    """

    def __init__(
        self,
        recipe: Recipe,
        out: Path,
        console: Console,
        fresh: bool = False,
        prune_ratio: float | None = None,
        sparsity: float | None = None,
        calibration_samples: int = 512,
        finetune: dict[str, Any] | None = None,
    ) -> None:
        self.pipelines = PIPELINES
        self.recipe, self.out, self.console, self.fresh = recipe, out, console, fresh
        self.prune_ratio, self.sparsity = prune_ratio, sparsity
        self.calibration_samples = calibration_samples
        self.finetune = dict(finetune or {})
        self.train_data, self.test_data = build_data(recipe)
        built = build(recipe, data=(self.train_data, self.test_data))
        assert built.teacher is not None, "compare() checks the recipe has a teacher"
        self.teacher: nn.Module = built.teacher.eval()
        # every row's agreement is against the same frozen teacher on the same test loader: run it once
        self.teacher_predictions = TeacherPredictions(self.teacher)
        self.task = built.distiller.task
        self.augment = built.augment
        self.student_params = count_parameters(built.student)
        self.named_inputs = isinstance(self.inputs(self.test_data, 1), Mapping)
        self.example = self.latency_example()
        self.large_batch = self.task.latency_batch or (64 if self.named_inputs else 256)
        self._made: dict[str, Produced] = {}

    def inputs(self, data: Any, n: int) -> Any:
        """The first ``n`` inputs of ``data`` as one batch (a tensor, or a dict of named tensors)."""
        return self.task.split(example_batch(data, n)).inputs

    def latency_example(self) -> Any:
        """One test input without the batch dimension. Text: the first test text padded to the data's
        ``max_length`` tokens (the longest input the models get), as ``benchmarks/text.py`` times them."""
        data = self.test_data
        first = self.inputs(data, 1)
        if not isinstance(first, Mapping):
            return first[0]
        if isinstance(data, TextData) and data.tokenizer is not None and data.texts:
            encoded = data.tokenizer(
                data.texts[:1],
                padding="max_length",
                truncation=True,
                max_length=data.max_length,
                return_tensors="pt",
            )
            labels = torch.zeros(1, dtype=torch.int64)
            first = self.task.split({**encoded, "label": labels, "index": labels}).inputs
        return {k: v[0] for k, v in first.items()}

    def test_loader(self) -> Any:
        return eval_loader(self.test_data, self.recipe.train.eval_batch_size)

    def calibration(self, batch_size: int = 64) -> list[Any]:
        """Training inputs for static quantization: ``calibration_samples`` of them, in batches (dicts of
        named inputs are cut alike, keeping one padded length)."""
        n = min(self.calibration_samples, len(self.train_data))
        batch = self.inputs(self.train_data, n)
        if isinstance(batch, Mapping):
            parts = {k: v.split(batch_size) for k, v in batch.items()}
            return [
                dict(zip(parts, values, strict=True))
                for values in zip(*parts.values(), strict=True)
            ]
        return list(batch.split(batch_size))

    def new_teacher(self) -> nn.Module:
        """A freshly built teacher architecture (random weights), e.g. to load a pruned teacher into."""
        shape = data_shape(self.recipe, self.train_data)
        teacher = build_teacher(self.recipe, *shape, weights=False)
        assert teacher is not None, "compare() checks the recipe has a teacher"
        return teacher

    def get(self, name: str) -> Produced:
        """Pipeline ``name``'s product, made on first request."""
        if name not in self._made:
            self._made[name] = self.pipelines.get(name)(self)
        return self._made[name]
