"""Text classification with Hugging Face style encoders: token ids in, class logits out.

Batches are dicts from :class:`distill.data.text.TextDataset` (``input_ids``, ``attention_mask``, optional
``token_type_ids``, ``label``, ``index``). Named outputs for taps:

* ``@logits`` (B, C);
* ``@hidden_states.N`` (B, T, H): N = 0 is the embedding output, N = 1..L the layers' outputs;
* ``@attentions.N`` (B, heads, T, T): layer N's (0-based) attention probabilities, returned only when
  ``output_attentions`` is on (recipes turn it on when a term taps them; the model is switched to eager
  attention, which can return them). In training mode they are taken after attention dropout.

``Batch.extras`` holds ``labels`` (B,), ``index`` (B,) and ``attention_mask`` (B, T), 1 real, 0 padding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError
from distill.tasks import TASKS
from distill.tasks.base import Batch
from distill.tasks.classification import ClassLogitsTask, checked_label_smoothing, logits_of

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def macro_f1(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN); a class never seen nor predicted is skipped."""
    confusion = torch.bincount(labels * num_classes + predicted, minlength=num_classes**2)
    # rows: true, columns: predicted
    confusion = confusion.reshape(num_classes, num_classes).double()
    tp = confusion.diag()
    denominator = confusion.sum(0) + confusion.sum(1)  # 2 TP + FP + FN
    present = denominator > 0
    return float((2 * tp[present] / denominator[present]).mean()) if present.any() else 0.0


@TASKS.register(
    "text_classification",
    description="token ids -> class logits; @hidden_states.N, @attentions.N; top-1, macro-F1, NLL, ECE",
)
class TextClassificationTask(ClassLogitsTask):
    """Sequence classification; ``output_attentions`` adds ``@attentions.N`` (costs an eager attention).

    Evaluation: top-1 accuracy (%), macro-F1 (%), NLL (nats), ECE (%), agreement with the teacher
    (% same argmax)."""

    name = "text_classification"
    label_fix = "build the model's head from the data's classes"
    # (B, T, ...) outputs: T follows each batch's padding, so distill.cache_teacher cannot keep them
    per_token_outputs = ("hidden_states", "attentions")
    named_inputs = True

    def __init__(self, label_smoothing: float = 0.0, output_attentions: bool = False) -> None:
        self.label_smoothing = checked_label_smoothing("text_classification", label_smoothing)
        self.output_attentions = bool(output_attentions)

    def request(self, taps: Iterable[str]) -> None:
        """Turn on the outputs that ``taps`` name and that cost extra (``@attentions.N``)."""
        if any(t.startswith("@attentions") for t in taps):
            self.output_attentions = True

    def split(self, batch: Any) -> Batch:
        if not isinstance(batch, Mapping) or "input_ids" not in batch or "label" not in batch:
            keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise DistillError(
                f"text_classification batches are dicts with input_ids and label, got {keys}; "
                "use a text dataset with a tokenizer (distill.data.text.TextDataset.set_tokenizer)"
            )
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        labels = batch["label"]
        extras = {
            k: v for k, v in batch.items() if k not in ("input_ids", "token_type_ids", "label")
        }
        extras["labels"] = labels
        return Batch(inputs=inputs, targets=labels, extras=extras)

    def forward(self, model: nn.Module, inputs: Any) -> dict[str, torch.Tensor]:
        return self._run(model, inputs, features=True)

    def _run(self, model: nn.Module, inputs: Any, features: bool) -> dict[str, torch.Tensor]:
        kwargs = dict(inputs) if isinstance(inputs, Mapping) else {"input_ids": inputs}
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "output_hidden_states"):  # a transformers model
            attentions = features and self.output_attentions
            if attentions and getattr(config, "_attn_implementation", "eager") != "eager":
                model.set_attn_implementation("eager")  # sdpa cannot return attention weights
            out = model(
                **kwargs,
                output_hidden_states=features,
                output_attentions=attentions,
                return_dict=True,
            )
            named = {"logits": out.logits}
            for i, h in enumerate(out.hidden_states or ()):
                named[f"hidden_states.{i}"] = h
            for i, a in enumerate(out.attentions or ()):
                named[f"attentions.{i}"] = a
            return named
        # any nn.Module taking input_ids=..., attention_mask=...
        return {"logits": logits_of(model(**kwargs))}

    def eval_logits(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """The logits alone: no hidden states or attentions at evaluation."""
        return self._run(model, inputs, features=False)["logits"]

    def more_metrics(self, probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Macro-F1 (%)."""
        return {"macro_f1": 100.0 * macro_f1(probs.argmax(1), labels, probs.shape[1])}
