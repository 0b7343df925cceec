"""The pipelines of ``distill compare``, each registered by name: it makes one model (trained, pruned and
fine-tuned, exported, quantized) and says how to label and measure it.

Trained pipelines reuse a finished run in ``<out>/<pipeline>`` when its recipe (or, for pruned models, its
settings and recipe key in ``compare.json``) is the same, so a second comparison only measures.

A pipeline registered with ``one_tensor_input="why"`` works only for models taking one input tensor
(images); for models with named inputs (text) its row is ``skipped: why`` instead of a crash.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

from torch import nn

from distill import export  # export.export_onnx is looked up per call (tests replace it)
from distill.api import clear_run_dir
from distill.compare.context import PIPELINES, Context, Produced
from distill.compare.fair import EXPORTED_SOURCES, VARIANTS
from distill.compare.runs import recipe_key, record_settings, settings_match, train_or_reuse
from distill.compress.prune import (
    channel_prune,
    load_pruned,
    magnitude_prune,
    make_permanent,
    save_pruned,
)
from distill.compress.qat import QAT_FILE, qat_run
from distill.config.build import build_distiller, build_trainer
from distill.config.run import open_run
from distill.config.schema import DistillSpec, Recipe
from distill.export import runtimes
from distill.export.quantize import quantize_onnx
from distill.export.run import default_int8_mode
from distill.export.runtime import OnnxModule
from distill.models import count_parameters


def _derived(ctx: Context, slug: str, **changes: Any) -> Recipe:
    data = ctx.recipe.model_dump()
    data.update(changes, output=str(ctx.out / slug))
    return Recipe.model_validate(data)


def _student_run(ctx: Context, slug: str, recipe: Recipe, label: str) -> Produced:
    run_dir = train_or_reuse(recipe, ctx.fresh, ctx.console, slug)
    run = open_run(run_dir, "last", teacher=ctx.teacher, data=(ctx.train_data, ctx.test_data))
    return Produced(run.student, label, artefact=run_dir / "model.safetensors")


@PIPELINES.register("teacher", about="the teacher as the recipe loads it (float32, PyTorch)")
def teacher(ctx: Context) -> Produced:
    return Produced(ctx.teacher, "teacher")


@PIPELINES.register("student-scratch", about="the student trained on labels only")
def student_scratch(ctx: Context) -> Produced:
    changes: dict[str, Any] = {"name": f"{ctx.recipe.name}-scratch", "distill": {}}
    if ctx.recipe.student.name != "from_teacher":  # a student cut from the teacher needs it, unused
        changes["teacher"] = None
    recipe = _derived(ctx, "student-scratch", **changes)
    return _student_run(ctx, "student-scratch", recipe, "student (scratch)")


@PIPELINES.register("student-kd", about="the student distilled as the recipe says")
def student_kd(ctx: Context) -> Produced:
    return _student_run(ctx, "student-kd", _derived(ctx, "student-kd"), "student (KD)")


NOT_CHANNEL_PRUNABLE = (
    "channel pruning (torch-pruning) here traces one input tensor and does not prune attention heads, "
    "so it does not apply to a transformer with named inputs"
)


def _fraction_for_student_size(ctx: Context) -> float:
    """The smallest channel-pruning ratio (to 1/256) that leaves the teacher no bigger than the student."""
    example = ctx.inputs(ctx.train_data, 2)
    low, high = 0.0, 0.99
    while high - low > 1 / 256:
        mid = (low + high) / 2
        if count_parameters(channel_prune(ctx.teacher, example, mid)) <= ctx.student_params:
            high = mid
        else:
            low = mid
    return round(high, 4)


def _finetune(
    ctx: Context, slug: str, model: nn.Module, distill: bool, settings: dict[str, Any]
) -> nn.Module:
    """Fine-tune ``model`` with the recipe's training settings: on labels, or with the recipe's KD terms
    and the unpruned teacher (``distill``). Saves ``pruned.safetensors`` + ``compare.json``."""
    run_dir = ctx.out / slug
    config = ctx.recipe.train.model_copy(update=ctx.finetune)
    # the recipe with the fine-tuning settings, by meaning (recipe_key): a setting a newer distill adds
    # at its default does not retrain a pruned run
    settings = {
        **settings,
        "distill": distill,
        "recipe": recipe_key(ctx.recipe.model_copy(update={"train": config})),
    }
    if not ctx.fresh and settings_match(run_dir, settings, "pruned.safetensors"):
        ctx.console.print(f"[green]{slug}[/]: reusing {run_dir}", soft_wrap=True)
        return load_pruned(ctx.new_teacher(), run_dir / "pruned.safetensors").eval()
    ctx.console.rule(slug)
    run_dir.mkdir(parents=True, exist_ok=True)
    clear_run_dir(run_dir)
    # the recipe's terms with the unpruned teacher online, or labels alone
    spec = (
        ctx.recipe.distill.model_copy(update={"cache_teacher": False}) if distill else DistillSpec()
    )
    model.requires_grad_(True).train()  # a copy of the frozen teacher
    distiller = build_distiller(spec, model, ctx.teacher if distill else None, ctx.task)
    trainer = build_trainer(
        distiller,
        ctx.train_data,
        ctx.test_data,
        config,
        run_dir=run_dir,
        augment=ctx.augment,
        console=ctx.console,
    )
    trainer.fit()
    model = make_permanent(model).eval()
    save_pruned(model, run_dir / "pruned.safetensors")
    record_settings(run_dir, settings)
    ctx.teacher.eval()
    return model


def _channel_pruned(ctx: Context, slug: str, distill: bool, label: str) -> Produced:
    ratio = ctx.prune_ratio if ctx.prune_ratio is not None else _fraction_for_student_size(ctx)
    pruned = channel_prune(ctx.teacher, ctx.inputs(ctx.train_data, 2), ratio)
    model = _finetune(ctx, slug, pruned, distill, {"channel_ratio": ratio})
    return Produced(model, label, artefact=ctx.out / slug / "pruned.safetensors")


@PIPELINES.register(
    "teacher-pruned",
    about="teacher channel-pruned (torch-pruning) to the student's size, fine-tuned on labels",
    one_tensor_input=NOT_CHANNEL_PRUNABLE,
)
def teacher_pruned(ctx: Context) -> Produced:
    return _channel_pruned(ctx, "teacher-pruned", False, "teacher, channel-pruned + fine-tuned")


@PIPELINES.register(
    "pruned-kd",
    about="teacher channel-pruned to the student's size, then distilled from the unpruned teacher",
    one_tensor_input=NOT_CHANNEL_PRUNABLE,
)
def pruned_kd(ctx: Context) -> Produced:
    return _channel_pruned(ctx, "pruned-kd", True, "teacher, channel-pruned + KD")


@PIPELINES.register(
    "teacher-sparse",
    about="teacher magnitude-pruned (unstructured) to the student's nonzero count, fine-tuned with masks",
)
def teacher_sparse(ctx: Context) -> Produced:
    total = count_parameters(ctx.teacher)
    amount = ctx.sparsity if ctx.sparsity is not None else round(1 - ctx.student_params / total, 4)
    masked = magnitude_prune(ctx.teacher, amount, permanent=False)
    model = _finetune(ctx, "teacher-sparse", masked, False, {"sparsity": amount})
    label = f"teacher, {100 * amount:.1f}% sparse + fine-tuned"
    return Produced(model, label, artefact=ctx.out / "teacher-sparse" / "pruned.safetensors")


def _onnx(ctx: Context, source: str, slug: str, variant: str) -> Produced:
    """``source``'s model as an exported file run by a runtime (``variant``, see
    :data:`~distill.compare.fair.VARIANTS`). The float32 file is exported once (parity-checked,
    ``<out>/<source>-onnx/model.onnx``); ``fp16`` converts it, ``int8`` quantizes it (static with the first
    and last layers in float for one input tensor, dynamic with every layer int8 for named inputs:
    :func:`~distill.export.run.default_int8_mode`), ``openvino`` and ``openvino-int8`` run the float32 and
    int8 files with OpenVINO."""
    made = ctx.get(source)
    folder = ctx.out / slug
    folder.mkdir(parents=True, exist_ok=True)
    example = ctx.inputs(ctx.test_data, 2)
    runtime, precision = VARIANTS[variant]
    if variant in ("openvino", "openvino-int8"):
        onnx_file = ctx.get(f"{source}-{'int8' if variant == 'openvino-int8' else 'onnx'}").artefact
        assert onnx_file is not None, "ONNX pipelines record their file"
        module = runtimes.load("openvino", onnx_file)
        path = onnx_file
    else:
        path = _onnx_file(ctx, made, source, folder, example, variant)
        module = OnnxModule(path)
    label = f"{made.name}, {_LABELS[variant]}"
    return Produced(
        module,
        label,
        runtime=runtime,
        precision=precision,
        params=count_parameters(made.model),
        size_bytes=path.stat().st_size,
        artefact=path,
    )


_LABELS = {
    "onnx": "ONNX",
    "fp16": "float16 ONNX",
    "int8": "int8 ONNX",
    "openvino": "OpenVINO",
    "openvino-int8": "int8 OpenVINO",
}


def _onnx_file(
    ctx: Context, made: Produced, source: str, folder: Path, example: Any, variant: str
) -> Path:
    if variant == "onnx":
        return export.export_onnx(made.model.eval(), example, folder / "model.onnx")
    float_path = ctx.get(f"{source}-onnx").artefact
    assert float_path is not None, "ONNX pipelines record their file"
    if variant == "fp16":
        return runtimes.convert_float16(float_path, folder / "model.fp16.onnx")
    mode = default_int8_mode(example)
    calibration = ctx.calibration() if mode == "static" else None
    keep = () if ctx.named_inputs else "first_last"  # text: every MatMul int8 (docs/text.md)
    return quantize_onnx(
        float_path, folder / "model.int8.onnx", mode=mode, calibration=calibration, keep_float=keep
    )


_ABOUT = {
    "onnx": "exported to ONNX, run by onnxruntime",
    "fp16": "exported to float16 ONNX (float32 inputs and outputs), run by onnxruntime",
    "int8": "exported to ONNX, int8 (static, calibrated; dynamic for text), run by onnxruntime",
    "openvino": "exported to ONNX, run by OpenVINO (CPU, float32 precision)",
    "openvino-int8": "the int8 ONNX file run by OpenVINO (CPU)",
}
for _source in EXPORTED_SOURCES:
    for _variant, _about in _ABOUT.items():
        _slug = f"{_source}-{_variant}"
        _meta: dict[str, Any] = {}
        if _source == "pruned-kd":
            _meta["one_tensor_input"] = NOT_CHANNEL_PRUNABLE
        if _variant.startswith("openvino"):
            _meta["needs"] = ("openvino", "openvino")
        PIPELINES.add(
            _slug,
            lambda ctx, s=_source, n=_slug, v=_variant: _onnx(ctx, s, n, v),
            about=f"{_source} {_about}",
            **_meta,
        )


@PIPELINES.register(
    "student-kd-qat",
    about="the KD student after quantization-aware training (qat: section, default 1 epoch, KD from "
    "the float student), int8 ONNX run by onnxruntime",
    one_tensor_input="quantization-aware training (torch FX) covers Conv/Linear/BatchNorm models with "
    "one input tensor, not transformers (LayerNorm, embeddings, attention)",
)
def student_kd_qat(ctx: Context) -> Produced:
    made = ctx.get("student-kd")
    weights = made.artefact  # <out>/student-kd/model.safetensors
    folder = ctx.out / "student-kd-qat"
    # the recipe's qat: section; fields left at their defaults are not recorded (earlier caches match)
    qat = ctx.recipe.qat
    settings = {
        "student": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "epochs": qat.epochs,
        **qat.model_dump(mode="json", exclude_defaults=True, exclude={"epochs"}),
    }
    if ctx.fresh or not settings_match(folder, settings, QAT_FILE):
        ctx.console.rule("student-kd-qat")
        qat_run(weights.parent, out=folder, checkpoint="last", settings=qat)
        record_settings(folder, settings)
    else:
        ctx.console.print(f"[green]student-kd-qat[/]: reusing {folder}", soft_wrap=True)
    path = folder / QAT_FILE
    return Produced(
        OnnxModule(path),
        f"{made.name}, QAT int8 ONNX",
        runtime="onnxruntime",
        precision="int8",
        params=count_parameters(made.model),
        size_bytes=path.stat().st_size,
        artefact=path,
    )


DEFAULT_PIPELINES = (
    "teacher",
    "student-scratch",
    "student-kd",
    "teacher-pruned",
    "pruned-kd",
    "teacher-int8",
    "student-kd-onnx",
    "student-kd-int8",
)
# Per task where the defaults above do not fit: transformers are not channel-pruned (NOT_CHANNEL_PRUNABLE).
TASK_DEFAULT_PIPELINES = {
    # YOLO: channel pruning and int8 of YOLO models are not measured yet
    # (name them with --pipelines to try).
    "detection": ("teacher", "student-scratch", "student-kd", "student-kd-onnx"),
    "text_classification": (
        "teacher",
        "student-scratch",
        "student-kd",
        "teacher-int8",
        "student-kd-onnx",
        "student-kd-int8",
    ),
}


def default_pipelines(task: str) -> tuple[str, ...]:
    """The pipelines ``compare`` runs for ``task`` when none are named."""
    return TASK_DEFAULT_PIPELINES.get(task, DEFAULT_PIPELINES)


def skip_reason(ctx: Context, name: str) -> str | None:
    """Why pipeline ``name`` does not apply to this comparison's models or this machine (``None``: it
    does): a one-tensor-input pipeline on named inputs, or a runtime whose extra is not installed."""
    meta = PIPELINES.meta(name)
    why = meta.get("one_tensor_input")
    if why and ctx.named_inputs:
        return str(why)
    if "needs" in meta:
        module, extra = meta["needs"]
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed here (pip install 'distill[{extra}]')"
    return None
