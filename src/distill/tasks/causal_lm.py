"""Causal (decoder-only) language modelling: token ids in, next-token logits out.

The contract every LM loss, the LM teacher cache and the data modes rely on (also in docs/lm.md):

* Dataset batches are dicts: ``input_ids`` (B, L) int64, ``labels`` (B, L) int64 with ``-100`` where a
  position is not scored (prompt tokens, padding), optional ``attention_mask`` (B, L) (1 real, 0 padding,
  padding on the right), ``index`` (B,) and optional ``chars`` (B,): characters of text covered by each
  row's scored targets (for bits per character).
* The task shifts, once: the model reads ``input_ids[:, :-1]`` and ``labels[:, 1:]`` are the targets, so
  with ``T = L - 1`` **row j of the logits predicts token j + 1**: ``logits[:, j]`` is scored against
  ``targets[:, j]``. Nothing downstream shifts again.
* Losses receive student logits (B, T, V), teacher logits (B, T, V) and, declared in ``extra_inputs``,
  ``labels``: the shifted targets (B, T), ``-100`` where ignored; ``attention_mask`` (B, T) of the input
  positions (all ones for packed text) is in ``Batch.extras`` too, for hidden-state losses. A batch with
  every target ignored is legal.

Named outputs for taps: ``@logits`` (B, T, V); ``@hidden_states.N`` (B, T, D), N = 0 the embedding
output, N = 1..L the blocks' outputs (computed only when a term taps them); ``@lm_hidden`` (B, T, D), what
the output head reads (after the final norm), and ``@lm_head`` (V, D), the head's weight: the chunked
loss path's inputs (a term's ``chunk_size``), also only when tapped.

Evaluation: ``nll`` (nats/token), ``ppl``, ``bpc`` (total NLL in bits / characters of the evaluated
text, comparable across tokenizers; only when the batches carry ``chars``), ``top1`` (next-token
accuracy %, the primary metric), ``agreement`` with the teacher (% same argmax), ``tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.tasks import TASKS
from distill.tasks.base import Batch, Task, TeacherPredictions

IGNORE = -100
MODEL_INPUTS = ("input_ids", "attention_mask")


def shift_batch(batch: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(inputs, targets)``: inputs ``input_ids[:, :-1]`` (and the mask alike), targets ``labels[:, 1:]``
    with ``-100`` wherever the target position is padding (``attention_mask`` 0)."""
    ids = batch["input_ids"]
    labels = batch.get("labels", ids)
    if ids.dim() != 2 or ids.shape[1] < 2 or labels.shape != ids.shape:
        raise DistillError(
            f"causal_lm needs input_ids and labels of one shape (B, L) with L >= 2, got "
            f"{tuple(ids.shape)} and {tuple(labels.shape)}; give blocks of at least 2 tokens"
        )
    inputs = {"input_ids": ids[:, :-1]}
    targets = labels[:, 1:].clone()
    mask = batch.get("attention_mask")
    if mask is not None:
        inputs["attention_mask"] = mask[:, :-1]
        targets[mask[:, 1:] == 0] = IGNORE
    return inputs, targets


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position NLL in nats (float32, 0 where ignored) and the valid mask, both (B, T)."""
    valid = targets != IGNORE
    vocab = logits.shape[-1]
    if valid.any():
        high = int(targets[valid].max())
        if high >= vocab or int(targets[valid].min()) < 0:
            raise DistillError(
                f"token id {high} is out of range for a model with a vocabulary of {vocab}; build the "
                "model for the data's tokenizer (num_classes = vocabulary size)"
            )
    nll = F.cross_entropy(
        logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE, reduction="none"
    )
    return nll.view(targets.shape), valid


@TASKS.register(
    "causal_lm",
    description="token ids -> next-token logits (B, T, V); @hidden_states.N; NLL, perplexity, bpc",
)
class CausalLMTask(Task):
    """Next-token prediction; the task loss is the mean cross-entropy over the batch's valid targets."""

    name = "causal_lm"
    primary_metric = "top1"
    # (B, T, ...) outputs: distill.cache_teacher cannot keep them (the LM top-k cache does)
    per_token_outputs = ("logits", "hidden_states", "lm_hidden")
    named_inputs = True

    def __init__(self) -> None:
        self.hidden_states = False
        self.head_inputs = False

    def request(self, taps: Iterable[str]) -> None:
        """Compute ``@hidden_states.N``, ``@lm_hidden`` and ``@lm_head`` only when a term taps them."""
        taps = list(taps)
        if any(t.startswith("@hidden_states") for t in taps):
            self.hidden_states = True
        if any(t in ("@lm_hidden", "@lm_head") for t in taps):
            self.head_inputs = True

    def split(self, batch: Any) -> Batch:
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise DistillError(
                f"causal_lm batches are dicts with input_ids (and labels), got {keys}; use an LM "
                "dataset such as shakespeare"
            )
        inputs, targets = shift_batch(batch)
        mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
        extras: dict[str, Any] = {"labels": targets, "attention_mask": mask}
        for key in ("index", "chars"):
            if key in batch:
                extras[key] = batch[key]
        if (
            "teacher_input_ids" in batch
        ):  # a teacher of another tokenizer: its own ids, shifted alike
            extras["teacher_inputs"] = {"input_ids": batch["teacher_input_ids"][:, :-1]}
        if "teacher_position" in batch:  # and the character-offset alignment (data/lm_align.py)
            extras["teacher_position"] = batch["teacher_position"][:, :-1]
            extras["student_vocab_key"] = batch["student_vocab_key"]
            extras["teacher_vocab_key"] = batch["teacher_vocab_key"]
        if "teacher_anchor" in batch:  # the marginal over the teacher's boundaries (lm_marginal.py)
            extras["teacher_anchor"] = batch["teacher_anchor"][:, :-1]
            extras["teacher_prefix"] = batch["teacher_prefix"][:, :-1]
            extras["prefix_keys"] = batch["prefix_keys"]
            extras["prefix_token"] = batch["prefix_token"]
        return Batch(inputs=inputs, targets=targets, extras=extras)

    def teacher_inputs(self, batch: Batch) -> Any:
        """The teacher's own ids of the same text when the data carries them (``teacher_input_ids``:
        another tokenizer, :mod:`distill.data.lm_pair`), else the student's inputs."""
        return batch.extras.get("teacher_inputs", batch.inputs)

    def count_items(self, batch: Batch) -> int:
        """The valid target tokens: the task loss and the token losses average over them, so the trainer
        weights micro-batches and ranks by their share of the step's tokens (``train/reduction.py``)."""
        return int((batch.targets != IGNORE).sum())

    def forward(self, model: nn.Module, inputs: Any) -> dict[str, torch.Tensor]:
        return run_lm(model, inputs, self.hidden_states, self.head_inputs)

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        nll, valid = token_nll(outputs["logits"], batch.targets)
        # a batch with nothing to score gives 0 (with a graph), not NaN
        return nll.sum() / valid.sum().clamp_min(1)

    def batch_metrics(
        self, outputs: dict[str, torch.Tensor], batch: Batch
    ) -> dict[str, torch.Tensor]:
        valid = batch.targets != IGNORE
        hits = (outputs["logits"].argmax(-1) == batch.targets) & valid
        return {"top1": 100.0 * hits.sum() / valid.sum().clamp_min(1)}

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[Any],
        teacher: nn.Module | TeacherPredictions | None = None,
        device: torch.device | str = "cpu",
    ) -> dict[str, float]:
        if isinstance(teacher, TeacherPredictions):
            teacher = teacher.teacher
        models = [m for m in (model, teacher) if m is not None]
        modes = [m.training for m in models]
        for m in models:
            m.eval()
        sums = {"nll": 0.0, "tokens": 0, "hits": 0, "agree": 0, "chars": 0.0}
        every_row_has_chars = True
        other_tokens = False
        try:
            for raw in loader:
                batch = self.split(raw).to(device)
                other_tokens = "teacher_inputs" in batch.extras
                logits = run_lm(model, batch.inputs, False)["logits"]
                nll, valid = token_nll(logits, batch.targets)
                predicted = logits.argmax(-1)
                sums["nll"] += float(nll.sum())
                sums["tokens"] += int(valid.sum())
                sums["hits"] += int(((predicted == batch.targets) & valid).sum())
                if teacher is not None and "teacher_inputs" not in batch.extras:
                    taught = run_lm(teacher, batch.inputs, False)["logits"].argmax(-1)
                    sums["agree"] += int(((taught == predicted) & valid).sum())
                if "chars" in batch.extras:
                    sums["chars"] += float(batch.extras["chars"].sum())
                else:
                    every_row_has_chars = False
        finally:
            for m, mode in zip(models, modes, strict=True):
                m.train(mode)
        # agreement needs one tokenizer: not given for a teacher of another one
        return lm_metrics(sums, teacher is not None and not other_tokens, every_row_has_chars)


def lm_metrics(sums: dict[str, float], with_teacher: bool, with_chars: bool) -> dict[str, float]:
    """The evaluation metrics from summed NLL (nats), token, hit, agreement and character counts."""
    tokens = sums["tokens"]
    if tokens == 0:
        raise DistillError(
            "evaluation data has no scored tokens (every label is -100); give a non-empty split"
        )
    nll = sums["nll"] / tokens
    metrics = {
        "nll": nll,
        "ppl": math.exp(min(nll, 80.0)),
        "top1": 100.0 * sums["hits"] / tokens,
        "tokens": float(tokens),
    }
    if with_chars and sums["chars"] > 0:
        metrics["bpc"] = sums["nll"] / math.log(2) / sums["chars"]
    if with_teacher:
        metrics["agreement"] = 100.0 * sums["agree"] / tokens
    return metrics


def run_lm(
    model: nn.Module, inputs: Mapping[str, torch.Tensor], hidden: bool, head: bool = False
) -> dict[str, Any]:
    """``{"logits": (B, T, V), "hidden_states.N": (B, T, D)...}`` of a Hugging Face causal LM or of any
    module called as ``model(input_ids, attention_mask=..., output_hidden_states=...)`` that returns
    logits, or ``(logits, hidden_states)`` when asked for them (distill's ``gpt``). ``head`` adds
    ``lm_hidden`` (the output head's input, caught by a forward hook) and ``lm_head`` (its weight)."""
    config = getattr(model, "config", None)
    output = output_head(model) if head else None
    caught: list[torch.Tensor] = []
    hook = (
        output.register_forward_hook(lambda module, args, out: caught.append(args[0]))
        if output is not None
        else None
    )
    try:
        if config is not None and hasattr(config, "output_hidden_states"):  # a transformers model
            out = model(**inputs, output_hidden_states=hidden, use_cache=False, return_dict=True)
            logits, states = out.logits, out.hidden_states or ()
        elif hidden:
            logits, states = model(**inputs, output_hidden_states=True)
        else:
            logits, states = model(**inputs), ()
    finally:
        if hook is not None:
            hook.remove()
    named: dict[str, Any] = {"logits": logits}
    for i, h in enumerate(states):
        named[f"hidden_states.{i}"] = h
    if output is not None:
        named["lm_hidden"], named["lm_head"] = caught[-1], output.weight
    return named


def output_head(model: nn.Module) -> nn.Linear:
    """The causal LM's output head: a Hugging Face model's ``get_output_embeddings()``, distill's
    ``gpt``'s ``head``; a bias-free ``nn.Linear`` (what the chunked loss path reads)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else getattr(model, "head", None)
    if not isinstance(head, nn.Linear) or head.bias is not None:
        raise DistillError(
            f"a term's chunk_size reads the output head's weight, but {type(model).__name__} has no "
            "bias-free nn.Linear head (get_output_embeddings() or .head); remove chunk_size"
        )
    return head
