"""Quantization-aware training (QAT) with the float model as the KD teacher, exported as int8 ONNX.

It uses torchao's PT2E flow (the ``qat`` extra), the successor of the deprecated
``torch.ao.quantization`` eager and FX APIs:

1. :func:`prepare_qat` captures the student with ``torch.export.export`` (dynamic batch) and inserts
   fake-quantization with ``prepare_qat_pt2e`` and :func:`make_quantizer` (torchao's x86 quantizer:
   weights int8 per output channel, symmetric; activations uint8 per tensor, asymmetric; the same scheme
   as the static int8 export in :mod:`distill.export.quantize`). Conv + BatchNorm are fused, so BatchNorm
   is folded into the quantized weights while it trains.
2. :func:`qat_distill` fine-tunes the fake-quant student with distill's own Distiller and Trainer (built by
   ``build_distiller`` / ``build_trainer``): the float student is the frozen teacher of a ``kd`` term,
   plus the task loss on the labels, on the recipe's device (a GPU too).
3. :func:`export_qat_onnx` converts it with ``convert_pt2e`` (BatchNorm folded, weights stored as int8,
   each activation's learned scale and zero-point a ``quantized_decomposed`` quantize/dequantize pair) and
   exports that with ``torch.onnx.export(dynamo=True)`` as QuantizeLinear/DequantizeLinear pairs;
   onnxruntime fuses them into QLinearConv / QGemm integer kernels.

:func:`qat_run` does all three for a trained run; see ``docs/export.md``.

The code: :mod:`distill.compress.qat_graph` (step 1), this module (step 2 and :func:`qat_run`),
:mod:`distill.compress.qat_onnx` (step 3); their public names are importable from here too.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from distill.compress.qat_graph import COMPUTE_OPS as COMPUTE_OPS  # re-exported
from distill.compress.qat_graph import QAT_EXTRA_HINT as QAT_EXTRA_HINT  # re-exported
from distill.compress.qat_graph import (
    KeepFloat,
    _version,
    int8_layers,
    prepare_qat,
)
from distill.compress.qat_graph import fake_quantizers as fake_quantizers  # re-exported
from distill.compress.qat_graph import make_quantizer as make_quantizer  # re-exported
from distill.compress.qat_graph import switchable as switchable  # re-exported
from distill.compress.qat_onnx import export_qat_onnx as export_qat_onnx  # re-exported
from distill.compress.qat_onnx import export_reference_onnx, to_reference
from distill.compress.qat_onnx import store_int8_weights as store_int8_weights  # re-exported
from distill.config.build import build_distiller, build_trainer, resolve_device
from distill.config.run import open_run, run_recipe
from distill.config.schema import DistillSpec, QatSpec, TermSpec, override
from distill.errors import DistillError
from distill.export.run import EXAMPLE_SAMPLES, example_inputs, rounded_metrics
from distill.export.runtime import OnnxModule
from distill.io import write_json
from distill.tasks import TASKS
from distill.train.config import TrainConfig

QAT_FILE, QAT_REPORT = "student.qat.int8.onnx", "qat.json"


def qat_distill(
    qat_student: nn.Module,
    teacher: nn.Module,
    task: Any,
    train_data: Any,
    val_data: Any = None,
    epochs: int = 1,
    lr: float = 0.005,
    temperature: float = 4.0,
    task_weight: float = 1.0,
    config: Any = None,
) -> dict[str, Any]:
    """Fine-tune ``qat_student`` (from :func:`prepare_qat`) in place with KD from the float ``teacher``.

    The loss is ``task_weight * task loss + kd(temperature)`` on the logits, trained by distill's
    :class:`~distill.train.Trainer` for ``epochs`` with SGD at ``lr`` (cosine schedule); ``config`` (a
    :class:`~distill.train.config.TrainConfig`) replaces those defaults and is updated with ``epochs`` and
    ``lr``. Returns the trainer's summary (``val_data`` metrics per epoch when given).
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise DistillError(f"QAT epochs must be an int >= 1, got {epochs!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise DistillError(f"QAT lr must be > 0, got {lr!r}; fine-tuning uses ~1/10 of training's")
    config = (config or TrainConfig(progress=False)).model_copy(
        update={"epochs": epochs, "lr": float(lr), "max_steps": None, "warmup_epochs": 0.0}
    )
    teacher = copy.deepcopy(teacher).eval()
    kd = TermSpec(loss="kd", options={"temperature": temperature}, name="kd")
    spec = DistillSpec(task_weight=float(task_weight), terms=[kd])
    distiller = build_distiller(spec, qat_student, teacher, task)
    summary = build_trainer(distiller, train_data, val_data, config).fit()
    qat_student.cpu().eval()
    return summary


def check_qat_task(task: str) -> None:
    """Refuse, before anything is written, a run whose task QAT cannot handle: its models take named
    inputs (text classification, causal LMs), and QAT captures a model called on one tensor."""
    if getattr(TASKS.get(task), "named_inputs", False):
        raise DistillError(
            f"--qat-epochs (QAT) takes models with one tensor input, not the named inputs of task "
            f"{task!r}; drop --qat-epochs (and export.qat) and use the dynamic int8 export: "
            "distill export --int8"
        )


def qat_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    temperature: float | None = None,
    keep_float: KeepFloat | None = None,
    checkpoint: str | None = None,
    settings: QatSpec | None = None,
) -> dict[str, Any]:
    """QAT for a trained run: fake-quantize its student, fine-tune it with KD from the float student for
    ``epochs`` on the recipe's data (``lr`` default: a tenth of the recipe's), export
    ``student.qat.int8.onnx`` to ``out`` (default ``RUN_DIR/qat``) and evaluate it on the test split.

    The settings are the run's recipe's ``qat:`` section (or ``settings``, which replaces it), each keyword
    argument given (not ``None``) overriding its field; ``checkpoint`` defaults to the recipe's
    ``export.checkpoint``. Returns what ``qat.json`` holds: ``metrics`` for ``float`` (the run's student),
    ``fake_quant`` (PyTorch) and ``onnx_int8`` (with ``agreement``, the % of test inputs whose top-1 equals
    the float student's).
    """
    saved = run_recipe(run_dir)
    check_qat_task(saved.task)
    given = {"epochs": epochs, "lr": lr, "temperature": temperature, "keep_float": keep_float}
    spec = override(settings if settings is not None else saved.qat, given)
    epochs, lr, temperature, keep_float = spec.epochs, spec.lr, spec.temperature, spec.keep_float
    run = open_run(run_dir, checkpoint if checkpoint is not None else saved.export.checkpoint)
    student, task, train, recipe = run.student, run.task, run.train_data, run.recipe
    test_loader = run.test_loader()
    example = example_inputs(task, test_loader, EXAMPLE_SAMPLES)
    qat_student = prepare_qat(student, example, keep_float)
    # the recipe's device: fake-quant training runs on a GPU too; conversion and export on the CPU
    config = recipe.train.model_copy(update={"progress": False})
    lr = recipe.train.lr / 10 if lr is None else lr
    qat_distill(qat_student, student, task, train, None, epochs, lr, temperature, config=config)
    out_dir = Path(out) if out is not None else Path(run_dir) / "qat"
    reference = to_reference(qat_student)
    path = export_reference_onnx(reference, example, out_dir / QAT_FILE)
    onnx = OnnxModule(path)
    result = {
        "run_dir": str(run_dir),
        "epochs": epochs,
        "lr": lr,
        "temperature": temperature,
        "device": str(resolve_device(config.device, "train.device")),
        "flow": f"torchao {_version()} prepare_qat_pt2e / convert_pt2e",
        "int8_layers": int8_layers(reference),
        "file": path.name,
        "size_bytes": onnx.size_bytes,
        "metrics": {
            "float": rounded_metrics(task.evaluate(student, test_loader)),
            "fake_quant": rounded_metrics(task.evaluate(qat_student, test_loader)),
            "onnx_int8": rounded_metrics(task.evaluate(onnx, test_loader, student)),
        },
    }
    write_json(out_dir / QAT_REPORT, result)
    return {**result, "file": str(path)}
