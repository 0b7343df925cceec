"""The sections read after training, which never change what a run trains: ``export:``, ``qat:`` and
``compare:`` (``tune:`` is in :mod:`distill.config.schema.tune`), and :func:`override`, by which a flag
given on the command line wins over the recipe."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, field_validator

from distill.config.schema.base import Strict
from distill.errors import did_you_mean
from distill.train.config import TrainConfig

SpecT = TypeVar("SpecT", bound=BaseModel)
# recipe sections read outside training (distill export, QAT, distill compare, distill tune): they never
# change a run
AFTER_TRAINING = ("export", "qat", "compare", "tune")


def override(spec: SpecT, given: Mapping[str, Any]) -> SpecT:
    """``spec`` with the fields in ``given`` that are not ``None`` replaced: a keyword argument (a flag
    given on the command line) wins over the recipe's section. Not validated again: the callers check
    what they take."""
    return spec.model_copy(update={k: v for k, v in given.items() if v is not None})


class ExportSpec(Strict):
    """``distill export`` settings (:func:`distill.export.export_run`); its flags override them."""

    format: Literal["onnx", "coreml"] = Field(
        "onnx",
        description="export format: onnx, or coreml (student.onnx and also student.mlpackage, checked "
        "but run only on macOS)",
    )
    opset: int | None = Field(
        None, description="ONNX opset (default: the exporter's own; others are converted)"
    )
    int8: bool = Field(False, description="also write an int8 model, student.int8.onnx")
    int8_mode: Literal["static", "dynamic"] | None = Field(
        None,
        description="static (calibrated on training batches) or dynamic (activation ranges per batch); "
        "default: dynamic for models with named inputs (text), static otherwise",
    )
    calibration_batches: int = Field(
        8, ge=1, description="static int8: training batches of 64 inputs it is calibrated on"
    )
    keep_first_last_float: bool | None = Field(
        None,
        description="int8: keep the first and last compute layers in float (default: yes for one "
        "tensor input, no for named inputs)",
    )
    checkpoint: Literal["best", "last"] = Field(
        "best", description="which checkpoint is exported (and fine-tuned by QAT)"
    )
    qat: bool = Field(
        False, description="also write a QAT int8 model, student.qat.int8.onnx (settings: qat:)"
    )
    select: bool = Field(
        False,
        description="also make float16, int8 static/dynamic and per-layer mixed files and pick, per "
        "target, the fastest within the accuracy budget (export.json: selection)",
    )
    targets: list[str] = Field(
        default_factory=lambda: ["onnxruntime"],
        min_length=1,
        description="runtimes the selection times the files on: onnxruntime, openvino, "
        "onnxruntime-cuda, onnxruntime-tensorrt",
    )
    budget: float = Field(
        1.0, ge=0, description="selection: points of the primary metric a file may lose"
    )
    select_batch: int = Field(1, ge=1, description="selection: batch size the files are timed at")
    select_threads: int = Field(
        1, ge=0, description="selection: intra-op threads the files are timed with (0: all cores)"
    )
    handback: bool = Field(
        False,
        description="at the end of training, also save the student in its family's own format "
        "(RUN_DIR/hf, RUN_DIR/ultralytics or RUN_DIR/image; `distill handback` does it later)",
    )


class QatSpec(Strict):
    """Quantization-aware training settings (:func:`distill.compress.qat.qat_run`)."""

    epochs: int = Field(1, ge=1, description="fine-tuning epochs with fake quantization")
    lr: float | None = Field(None, gt=0, description="learning rate (default: train.lr / 10)")
    temperature: float = Field(4.0, gt=0, description="kd temperature against the float student")
    keep_float: Literal["first_last"] | list[str] = Field(
        "first_last",
        description="module names left in float, or first_last (the first and last Conv/Linear)",
    )


class CompareSpec(Strict):
    """``distill compare`` settings (:func:`distill.compare.compare`); its flags override them."""

    pipelines: list[str] | None = Field(
        None, description="pipeline names (`distill compare --list`; default: the task's defaults)"
    )
    out: str = Field("runs/compare", description="where the runs and the report go")
    teacher_recipe: str | None = Field(
        None,
        description="train (once, cached) the teacher with this recipe, e.g. fashion_mnist/teacher",
    )
    tiny: bool = Field(False, description="a seconds-long smoke run on a data subset")
    latency_repeats: int = Field(
        50, ge=1, description="timed forward passes per latency cell (after warm-up ones)"
    )
    prune_ratio: float | None = Field(
        None, ge=0, lt=1, description="share of channels pruned (default: to the student's size)"
    )
    sparsity: float | None = Field(
        None, ge=0, lt=1, description="share of weights zeroed (default: to the student's size)"
    )
    finetune: dict[str, Any] = Field(
        default_factory=dict, description="train settings changed for fine-tuning pruned teachers"
    )
    calibration_samples: int = Field(
        512, ge=1, description="training inputs static int8 models are calibrated on"
    )
    bench_results: list[str] = Field(
        default_factory=list,
        description="`distill bench --out` JSON files merged into the report (rows matched by the "
        "file's SHA-256): latencies timed on other machines",
    )

    @field_validator("finetune")
    @classmethod
    def _train_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        fields = list(TrainConfig.model_fields)
        for key in value:
            if key not in fields:
                raise ValueError(
                    f"finetune: {key!r} is not a train setting.{did_you_mean(str(key), fields)} "
                    f"Allowed: {', '.join(fields)}"
                )
        return value
