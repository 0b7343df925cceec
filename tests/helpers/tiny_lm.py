"""A tiny causal LM, its task, a token dataset and a token KL loss, for tests of the LM teacher sources
(the top-k cache, the data modes) that must not depend on the shipped causal_lm task.

The contract is the causal-LM one: inputs are token ids ``(B, T)``, ``labels`` ``(B, T)`` hold the next
token of each position (row ``j`` predicts token ``j + 1``) and ``-100`` where nothing is predicted.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from distill.tasks.base import Batch, Task


class TinyLM(nn.Module):
    """Embedding -> causal mean of the prefix (a cumulative average) -> MLP -> vocabulary logits, with a
    ``generate`` that samples one token at a time from the running sums (its KV cache)."""

    def __init__(self, vocab: int = 11, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(2 * width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)  # (B, T, D)
        steps = torch.arange(1, ids.shape[1] + 1, device=ids.device).view(1, -1, 1)
        prefix = x.cumsum(1) / steps
        return self.head(torch.tanh(self.mix(torch.cat([x, prefix], -1))))

    @torch.no_grad()
    def generate(
        self, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0
    ) -> torch.Tensor:
        x = self.embed(ids)
        total, count = x.sum(1), ids.shape[1]  # the cache: a running sum of the prefix
        last = x[:, -1]
        out = [ids]
        for _ in range(max_new_tokens):
            h = torch.tanh(self.mix(torch.cat([last, total / count], -1)))
            probs = torch.softmax(self.head(h) / temperature, -1)
            token = torch.multinomial(probs, 1)
            out.append(token)
            last = self.embed(token[:, 0])
            total, count = total + last, count + 1
        return torch.cat(out, 1)


class TokenData(Dataset):
    """``n`` random token sequences of length ``length``; items ``{"input_ids", "index"}``."""

    def __init__(self, n: int = 20, length: int = 9, vocab: int = 11, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "index": torch.tensor(i)}


def next_token_labels(ids: torch.Tensor) -> torch.Tensor:
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = ids[:, 1:]
    return labels


class TinyLMTask(Task):
    name = "tiny_lm"
    primary_metric = "neg_nll"

    def split(self, batch: Any) -> Batch:
        ids = batch["input_ids"]
        labels = next_token_labels(ids)
        return Batch(ids, labels, {"labels": labels, "index": batch["index"]})

    def forward(self, model: nn.Module, inputs: Any) -> dict[str, torch.Tensor]:
        return {"logits": model(inputs)}

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        logits = outputs["logits"]
        return F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten())

    def batch_metrics(self, outputs, batch) -> dict[str, torch.Tensor]:
        return {}

    def evaluate(self, model, loader, teacher=None, device="cpu") -> dict[str, float]:
        total, count = 0.0, 0
        with torch.no_grad():
            for raw in loader:
                batch = self.split(raw)
                logits = model(batch.inputs.to(device))
                mask = batch.targets != -100
                total += float(
                    F.cross_entropy(logits[mask], batch.targets[mask].to(device), reduction="sum")
                )
                count += int(mask.sum())
        return {"neg_nll": -total / max(count, 1), "nll": total / max(count, 1)}


class TokenKL(nn.Module):
    """Forward KL(teacher || student) at ``temperature`` per valid token (``labels != -100``), summed over
    the vocabulary, averaged over valid tokens, times temperature**2."""

    extra_inputs = ("labels",)

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student, teacher, labels):
        t = self.temperature
        mask = labels != -100
        s = torch.log_softmax(student[mask].float() / t, -1)
        p = torch.log_softmax(teacher[mask].float() / t, -1)
        kl = (p.exp() * (p - s)).sum(-1)
        return kl.sum() / mask.sum().clamp_min(1) * t * t
