"""QAT step 1: the student captured with ``torch.export`` and fake-quantized by torchao's PT2E flow
(:func:`prepare_qat`, :func:`make_quantizer`), its ``train()``/``eval()`` switch (:func:`switchable`), and
the layers a prepared or converted graph quantizes. torchao (the ``qat`` extra) is imported on first use."""

from __future__ import annotations

import copy
import importlib
import logging
import types
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from distill.errors import DistillError, did_you_mean, first_line
from distill.export.exporter import _failing_module

QAT_EXTRA_HINT = "pip install 'distill[qat]'"


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
