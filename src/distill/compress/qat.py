"""Quantization-aware training (QAT) with the float model as the KD teacher, exported as int8 ONNX.

1. :func:`prepare_qat` traces the student with ``torch.fx`` and inserts fake-quantization
   (``torch.ao.quantization.quantize_fx.prepare_qat_fx``): weights int8 per output channel (symmetric),
   activations uint8 per tensor (asymmetric), the same scheme as the static int8 export in
   :mod:`distill.export.quantize`. Conv + BatchNorm (+ ReLU) are fused, so BatchNorm is folded into the
   quantized weights while it trains.
2. :func:`qat_distill` fine-tunes the fake-quant student with distill's own Distiller and Trainer: the
   float student is the frozen teacher of a ``kd`` term, plus the task loss on the labels.
3. :func:`export_qat_onnx` converts the learned scales and zero-points to a reference graph of
   ``quantized_decomposed`` quantize/dequantize ops (BatchNorm folded) and exports it with
   ``torch.onnx.export(dynamo=True)`` as QuantizeLinear/DequantizeLinear pairs; onnxruntime fuses them into
   QLinearConv / QGemm integer kernels. (The fake-quant modules themselves do not export: they branch on
   buffer values.)

:func:`qat_run` does all three for a trained run; see ``docs/export.md``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from distill.config.build import build_distiller, build_trainer
from distill.config.run import open_run, run_recipe
from distill.config.schema import DistillSpec, QatSpec, TermSpec, override
from distill.errors import DistillError, did_you_mean, first_line
from distill.export._deps import require
from distill.export.exporter import _failing_module, export_onnx
from distill.export.run import EXAMPLE_SAMPLES, example_inputs, rounded_metrics
from distill.export.runtime import OnnxModule, ParityError, check_parity
from distill.io import write_json
from distill.train.config import TrainConfig

QUANTIZED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
FOLDED_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)  # folded into the preceding conv
QAT_FILE, QAT_REPORT = "student.qat.int8.onnx", "qat.json"
KeepFloat = Sequence[str] | Literal["first_last"]


def _ao() -> Any:
    """``torch.ao.quantization`` without its deprecation warning (torch's own QAT is what we use)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch.ao.quantization as ao
        import torch.ao.quantization.quantize_fx  # noqa: F401 - the FX entry points
    return ao


def qconfig_mapping(keep_float: Sequence[str] = ()) -> Any:
    """Fake-quant settings: int8 symmetric per-channel weights, uint8 per-tensor activations; the modules
    named in ``keep_float`` stay in float."""
    ao = _ao()
    activation = ao.FakeQuantize.with_args(
        observer=ao.MovingAverageMinMaxObserver,
        quant_min=0, quant_max=255, dtype=torch.quint8, qscheme=torch.per_tensor_affine,
    )  # fmt: skip
    weight = ao.FakeQuantize.with_args(
        observer=ao.MovingAveragePerChannelMinMaxObserver,
        quant_min=-128, quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )  # fmt: skip
    mapping = ao.QConfigMapping().set_global(ao.QConfig(activation=activation, weight=weight))
    for name in keep_float:
        mapping.set_module_name(name, None)
    return mapping


def prepare_qat(
    model: nn.Module, example: torch.Tensor, keep_float: KeepFloat = "first_last"
) -> nn.Module:
    """A copy of ``model`` with fake-quantization inserted, in train mode (``model`` is left as it was).

    ``example``: an input batch ``(B, ...)``. ``keep_float``: module names to leave in float; the default
    ``"first_last"`` keeps the first and last Conv/Linear layers (the recipe of the static int8 export,
    :func:`~distill.export.quantize.first_and_last_layers`), ``()`` quantizes every layer.
    Layers with weights that int8 QAT cannot quantize (anything but Conv, Linear and a BatchNorm that folds
    into a conv) raise a :class:`DistillError` naming the module, unless they are in ``keep_float``.
    """
    ao = _ao()
    model = copy.deepcopy(model).cpu()
    order = _compute_layers(model)
    if isinstance(keep_float, str):
        if keep_float != "first_last":
            raise DistillError(
                f"keep_float must be a list of module names or 'first_last', got {keep_float!r}"
            )
        keep_float = list(dict.fromkeys(order[:1] + order[-1:]))
    _check_modules(model, list(keep_float))
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ao.quantize_fx.prepare_qat_fx(model, qconfig_mapping(keep_float), (example.cpu(),))


def _compute_layers(model: nn.Module) -> list[str]:
    """Conv/Linear module names in the order ``forward`` calls them (an FX trace)."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # noqa: BLE001 - tracing errors are plain exceptions
        where = _failing_module(model, err)
        raise DistillError(
            f"QAT cannot trace {f'module {where!r}' if where else 'the model'} with torch.fx "
            f"({first_line(err)}); its forward must not branch on tensor values: use torch.where, "
            "or quantize it after export with static int8 (export_run(..., int8=True))"
        ) from None
    modules = dict(model.named_modules())
    called = [n.target for n in graph.nodes if n.op == "call_module"]
    return [str(n) for n in called if isinstance(modules[str(n)], QUANTIZED_LAYERS)]


def _check_modules(model: nn.Module, keep_float: list[str]) -> None:
    names = [n for n, _ in model.named_modules() if n]
    for name in keep_float:
        if name not in names:
            raise DistillError(
                f"keep_float names module {name!r}, which the model does not have."
                f"{did_you_mean(name, names)} Modules: {', '.join(names[:12])}"
                f"{' ...' if len(names) > 12 else ''}"
            )
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        inside_kept = any(name == k or name.startswith(k + ".") for k in keep_float)
        if own and not inside_kept and not isinstance(module, QUANTIZED_LAYERS + FOLDED_LAYERS):
            raise DistillError(
                f"QAT cannot quantize module {name!r} ({type(module).__name__}): int8 QAT handles "
                f"Conv, Linear and BatchNorm after a conv; leave it in float with keep_float=[{name!r}]"
            )


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


def to_reference(qat_model: nn.Module) -> nn.Module:
    """The fake-quant model as float ops between ``quantized_decomposed`` quantize/dequantize pairs, with
    BatchNorm folded into the weights: what :func:`export_qat_onnx` exports (``qat_model`` is unchanged)."""
    ao = _ao()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ao.quantize_fx._convert_to_reference_decomposed_fx(
            copy.deepcopy(qat_model).cpu().eval()
        )


def export_qat_onnx(
    qat_model: nn.Module, example: torch.Tensor, path: str | Path, check: bool = True
) -> Path:
    """Write the QAT model as an int8 QDQ ONNX file (dynamic batch) and return its path.

    With ``check``, onnxruntime's outputs on ``example`` ``(B, ...)`` must match :func:`to_reference`'s within
    10% of the largest logit, or the file is deleted and :class:`~distill.export.ParityError` is raised.
    They are not bit-equal: onnxruntime requantizes the int32 accumulators of its fused kernels, so an
    activation at a rounding boundary can land one step (1/255 of its range) away and that propagates
    (measured: 1-6% of the largest logit on small CNNs, top-1 unchanged).
    """
    reference = to_reference(qat_model)
    path = export_onnx(reference, example, path, check=False)
    store_int8_weights(path)
    if check:
        with torch.no_grad():
            atol = 0.1 * float(reference(example.cpu()).abs().max())
        report = check_parity(reference, path, example.cpu(), rtol=0.0, atol=atol)
        if not report.ok:
            path.unlink(missing_ok=True)
            raise ParityError(report, path)
    return path


def store_int8_weights(path: str | Path) -> int:
    """Rewrite ``path`` so weights are stored as int8: each ``QuantizeLinear`` (and the ``Clip`` after it)
    of a constant float weight is computed once and replaced by its int8 initializer, which feeds the
    ``DequantizeLinear`` directly, as in onnxruntime's own QDQ files. Returns how many were folded.

    The exporter keeps the float weights and quantizes them on every run; onnxruntime folds that at load
    time anyway, so outputs do not change, but the file shrinks to int8 size.
    """
    onnx = require("onnx")
    helper = onnx.numpy_helper
    model = onnx.load(str(path))
    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    dead, folded = set(), 0
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or not all(i in consts for i in node.input):
            continue
        w, scale, zero = (helper.to_array(consts[i]) for i in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if scale.ndim:
            shape[axis] = -1
        q = np.rint(w / scale.reshape(shape)) + zero.reshape(shape).astype(np.int64)
        last = node
        after = users.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "Clip":
            if not all(i in consts for i in after[0].input[1:] if i):
                continue
            low, high = (helper.to_array(consts[i]) for i in after[0].input[1:3])
            q, last = np.clip(q, low, high), after[0]
            dead.add(id(after[0]))
        info = np.iinfo(zero.dtype)
        q = np.clip(q, info.min, info.max).astype(zero.dtype)
        graph.initializer.append(helper.from_array(q, last.output[0]))
        dead.add(id(node))
        folded += 1
    _replace(graph.node, [n for n in graph.node if id(n) not in dead])
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    _replace(graph.initializer, [t for t in graph.initializer if t.name in used])
    produced = {o for n in graph.node for o in n.output}
    _replace(graph.value_info, [v for v in graph.value_info if v.name in produced])
    onnx.save(model, str(path))
    return folded


def _replace(field: Any, items: list[Any]) -> None:
    """Set a repeated protobuf field to ``items`` (copies: the old entries are cleared first)."""
    kept = [type(item)() for item in items]
    for new, old in zip(kept, items, strict=True):
        new.CopyFrom(old)
    del field[:]
    field.extend(kept)


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
    given = {"epochs": epochs, "lr": lr, "temperature": temperature, "keep_float": keep_float}
    spec = override(settings if settings is not None else saved.qat, given)
    epochs, lr, temperature, keep_float = spec.epochs, spec.lr, spec.temperature, spec.keep_float
    run = open_run(run_dir, checkpoint if checkpoint is not None else saved.export.checkpoint)
    student, task, train, recipe = run.student, run.task, run.train_data, run.recipe
    test_loader = run.test_loader()
    example = example_inputs(task, test_loader, EXAMPLE_SAMPLES)
    qat_student = prepare_qat(student, example, keep_float)
    config = recipe.train.model_copy(update={"progress": False, "device": "cpu"})
    lr = recipe.train.lr / 10 if lr is None else lr
    qat_distill(qat_student, student, task, train, None, epochs, lr, temperature, config=config)
    out_dir = Path(out) if out is not None else Path(run_dir) / "qat"
    path = export_qat_onnx(qat_student, example, out_dir / QAT_FILE)
    onnx = OnnxModule(path)
    result = {
        "run_dir": str(run_dir),
        "epochs": epochs,
        "lr": lr,
        "temperature": temperature,
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
