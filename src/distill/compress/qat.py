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
"""

from __future__ import annotations

import copy
import importlib
import logging
import types
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from distill.config.build import build_distiller, build_trainer, resolve_device
from distill.config.run import open_run, run_recipe
from distill.config.schema import DistillSpec, QatSpec, TermSpec, override
from distill.errors import DistillError, did_you_mean, first_line
from distill.export._deps import require
from distill.export.exporter import _failing_module, export_onnx
from distill.export.run import EXAMPLE_SAMPLES, example_inputs, rounded_metrics
from distill.export.runtime import OnnxModule, ParityError, check_parity
from distill.io import write_json
from distill.tasks import TASKS
from distill.train.config import TrainConfig

QAT_EXTRA_HINT = "pip install 'distill[qat]'"
QAT_FILE, QAT_REPORT = "student.qat.int8.onnx", "qat.json"
KeepFloat = Sequence[str] | Literal["first_last"]
_aten = torch.ops.aten
COMPUTE_OPS = (
    _aten.conv1d.default,
    _aten.conv2d.default,
    _aten.conv3d.default,
    _aten.linear.default,
)


def _torchao(module: str) -> Any:
    """A torchao module, or a one-line error naming the extra that installs it."""
    # torchao 0.18 registers an Enum with torch's pytree on import, which torch 2.14 logs a warning about
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        import torchao  # noqa: F401 - the `qat` extra
    except ImportError:
        raise DistillError(
            f"quantization-aware training needs torchao, which is not installed; {QAT_EXTRA_HINT}"
        ) from None
    finally:
        pytree_log.setLevel(level)
    return importlib.import_module(f"torchao.{module}")


def _version() -> str:
    from importlib.metadata import version

    return version("torchao")


def make_quantizer(keep_float: Sequence[str] = ()) -> Any:
    """torchao's ``X86InductorQuantizer`` in QAT mode (uint8 per-tensor activations, int8 per-channel
    symmetric weights), with two changes for onnxruntime: a quantized ``linear`` also gets its output
    quantized (so the Q/DQ pattern fuses into ``QGemm``), and the ops of the modules named in
    ``keep_float`` are left unannotated, i.e. float. (Its own ``set_module_name_qconfig(name, None)``
    breaks conv + BatchNorm fusion in QAT mode.)"""
    x86 = _torchao("quantization.pt2e.quantizer.x86_inductor_quantizer")
    name_filter = _torchao("quantization.pt2e.quantizer.utils").get_module_name_filter
    kept = [name_filter(name) for name in keep_float]

    class OnnxQdqQuantizer(x86.X86InductorQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            for node in model.graph.nodes:
                if any(is_kept(node) for is_kept in kept):
                    node.meta.pop("quantization_annotation", None)
                    continue
                note = node.meta.get("quantization_annotation")
                if (
                    node.target == _aten.linear.default
                    and note is not None
                    and note.input_qspec_map
                ):
                    if note.output_qspec is None:
                        note.output_qspec = next(iter(note.input_qspec_map.values()))
            return model

    config = x86.get_default_x86_inductor_quantization_config(is_qat=True)
    return OnnxQdqQuantizer().set_global(config)


def prepare_qat(
    model: nn.Module, example: torch.Tensor, keep_float: KeepFloat = "first_last"
) -> nn.Module:
    """A fake-quantized copy of ``model`` (a ``torch.fx.GraphModule``), in train mode, on the CPU
    (``model`` is left as it was); ``.train()``/``.eval()`` work on it as on any module.

    ``example``: an input batch ``(B, ...)`` (the batch dimension stays dynamic). ``keep_float``: module
    names to leave in float; the default ``"first_last"`` keeps the first and last Conv/Linear layers (the
    recipe of the static int8 export, :func:`~distill.export.quantize.first_and_last_layers`), ``()``
    quantizes every layer the quantizer knows (Conv, Linear, pooling, add, cat); others (LayerNorm,
    embeddings, ...) stay float.
    """
    quantize = _torchao("quantization.pt2e.quantize_pt2e")
    if isinstance(example, Mapping) or not isinstance(example, torch.Tensor):
        raise DistillError(
            f"QAT takes models with one tensor input, got {type(example).__name__}; for models with "
            "named inputs (text) use the dynamic int8 export: distill export --int8"
        )
    model = copy.deepcopy(model).cpu().eval()
    graph = _capture(model, example.cpu())
    order = _compute_layers(graph)
    if isinstance(keep_float, str):
        if keep_float != "first_last":
            raise DistillError(
                f"keep_float must be a list of module names or 'first_last', got {keep_float!r}"
            )
        keep_float = list(dict.fromkeys(order[:1] + order[-1:]))
    _check_names(model, list(keep_float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = quantize.prepare_qat_pt2e(graph, make_quantizer(list(keep_float)))
    return switchable(prepared).train()


def switchable(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``graph`` (a captured model) with ``train(mode)`` and ``eval()`` that work as on any module: they
    switch its dropout and BatchNorm ops (torchao's ``move_exported_model_to_train/eval``), set
    ``training`` on its submodules, turn its fake-quantizers' observers on in training and off in eval
    (the learned ranges are frozen while it is evaluated), and return the module.

    torchao 0.18's switch rewrites every dropout with its pattern's rate, 0.5, whatever the model's was
    (a ``Dropout(p=0.0)`` head then drops half its inputs while QAT trains); each dropout gets its own
    rate back here, in graph order.
    """
    pt2e = _torchao("quantization.pt2e")
    rates = [n.args[1] for n in graph.graph.nodes if n.target == _aten.dropout.default]

    def train(self: torch.fx.GraphModule, mode: bool = True) -> torch.fx.GraphModule:
        (pt2e.move_exported_model_to_train if mode else pt2e.move_exported_model_to_eval)(self)
        dropouts = [n for n in self.graph.nodes if n.target == _aten.dropout.default]
        if len(dropouts) == len(rates):
            for node, rate in zip(dropouts, rates, strict=True):
                node.args = (node.args[0], rate, *node.args[2:])
            self.recompile()
        elif (
            mode and dropouts
        ):  # nothing to restore the rates from: refuse rather than train wrongly
            raise DistillError(
                f"QAT found {len(dropouts)} dropout ops after switching to training, {len(rates)} "
                "before; set the model's dropout layers to nn.Identity() for QAT"
            )
        self.apply(pt2e.enable_observer if mode else pt2e.disable_observer)
        for module in self.modules():
            module.training = mode
        return self

    def eval(self: torch.fx.GraphModule) -> torch.fx.GraphModule:
        return self.train(False)

    graph.train = types.MethodType(train, graph)  # type: ignore[method-assign]
    graph.eval = types.MethodType(eval, graph)  # type: ignore[method-assign]
    return graph


def _capture(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """``torch.export.export(model, (example,))`` with a dynamic batch, as a module."""
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception as err:  # noqa: BLE001 - torch.export raises many kinds of errors
        where = _failing_module(model, err)
        raise DistillError(
            f"QAT cannot trace {f'module {where!r}' if where else 'the model'} with torch.export "
            f"({first_line(err)}); its forward must not branch on tensor values: use torch.where, "
            "or quantize it after export with static int8 (export_run(..., int8=True))"
        ) from None
    return exported.module()


def _compute_layers(graph: torch.fx.GraphModule) -> list[str]:
    """Conv/Linear module names in the order ``forward`` calls them (from the captured graph)."""
    names = []
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack") if node.op == "call_function" else None
        if node.target in COMPUTE_OPS and stack:
            names.append(str(list(stack.values())[-1][0]))
    return names


def _check_names(model: nn.Module, keep_float: list[str]) -> None:
    names = [n for n, _ in model.named_modules() if n]
    for name in keep_float:
        if name not in names:
            raise DistillError(
                f"keep_float names module {name!r}, which the model does not have."
                f"{did_you_mean(name, names)} Modules: {', '.join(names[:12])}"
                f"{' ...' if len(names) > 12 else ''}"
            )


def fake_quantizers(model: nn.Module) -> list[str]:
    """Names of the fake-quantize modules :func:`prepare_qat` inserted (one per quantized tensor)."""
    base = _torchao("quantization.pt2e").FakeQuantizeBase
    return [n for n, m in model.named_modules() if isinstance(m, base)]


def int8_layers(model: torch.fx.GraphModule) -> list[str]:
    """The Conv/Linear modules whose weights are quantized, in call order (the others run in float), of a
    fake-quant model (:func:`prepare_qat`: a fake-quantizer on the weight's path) or a converted one
    (:func:`to_reference`: an int8 weight dequantized per channel)."""
    fake = _torchao("quantization.pt2e").FakeQuantizeBase
    modules = dict(model.named_modules())
    dequantize = torch.ops.quantized_decomposed.dequantize_per_channel.default

    def quantized(node: Any, depth: int = 4) -> bool:
        if not isinstance(node, torch.fx.Node) or depth == 0:
            return False
        if node.op == "call_module" and isinstance(modules.get(str(node.target)), fake):
            return True
        if node.op == "call_function" and node.target == dequantize:
            return True
        return node.op == "call_function" and any(quantized(a, depth - 1) for a in node.args)

    names = []
    for node in model.graph.nodes:
        stack = node.meta.get("nn_module_stack") if node.op == "call_function" else None
        if node.target in COMPUTE_OPS and stack and len(node.args) > 1 and quantized(node.args[1]):
            names.append(str(list(stack.values())[-1][0]))
    return names


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
    """The fake-quant model converted by ``convert_pt2e``: float ops between ``quantized_decomposed``
    quantize/dequantize pairs, BatchNorm folded and weights stored as int8; what :func:`export_qat_onnx`
    exports, in eval mode on the CPU (``qat_model`` is unchanged)."""
    quantize = _torchao("quantization.pt2e.quantize_pt2e")
    model = copy.deepcopy(qat_model).cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = quantize.convert_pt2e(model)
    return switchable(converted).eval()


def export_qat_onnx(
    qat_model: nn.Module, example: torch.Tensor, path: str | Path, check: bool = True
) -> Path:
    """Write the QAT model (from :func:`prepare_qat`) as an int8 QDQ ONNX file (dynamic batch) and return
    its path: :func:`to_reference`, then :func:`export_reference_onnx`."""
    return export_reference_onnx(to_reference(qat_model), example, path, check)


def export_reference_onnx(
    reference: nn.Module, example: torch.Tensor, path: str | Path, check: bool = True
) -> Path:
    """Write a converted QAT model (:func:`to_reference`) as an int8 QDQ ONNX file and return its path.

    With ``check``, onnxruntime's outputs on ``example`` ``(B, ...)`` must match ``reference``'s within
    10% of the largest logit, or the file is deleted and :class:`~distill.export.ParityError` is raised.
    They are not bit-equal: onnxruntime requantizes the int32 accumulators of its fused kernels, so an
    activation at a rounding boundary can land one step (1/255 of its range) away and that propagates
    (measured: 1-6% of the largest logit on small CNNs, top-1 unchanged).
    """
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

    ``convert_pt2e`` already stores the quantized weights as int8, so on its graphs this folds nothing;
    it is kept for a graph whose float weights are quantized at run time (onnxruntime folds that at
    load time anyway, so outputs do not change, but the file shrinks to int8 size).
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
