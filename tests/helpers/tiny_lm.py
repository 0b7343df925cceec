"""A tiny causal LM, a token dataset and a token KL loss for tests of the LM teacher sources (the top-k
cache, the data modes), seconds-fast and independent of the shipped GPT and Shakespeare data.

They follow the causal_lm contract (docs/lm.md): dataset items ``{"input_ids", "labels", "index"}``,
the model called as ``model(input_ids=..., attention_mask=...)``, row ``j`` predicting token ``j + 1``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset


class TinyLM(nn.Module):
    """Embedding -> causal mean of the prefix (a cumulative average) -> MLP -> vocabulary logits, with a
    ``generate`` that samples one token at a time from the running sums (its KV cache)."""

    def __init__(self, vocab: int = 11, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(2 * width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None) -> torch.Tensor:
        ids = input_ids
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
    """``n`` random token sequences of length ``length``; items ``{"input_ids", "labels", "index"}``."""

    def __init__(self, n: int = 20, length: int = 9, vocab: int = 11, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "labels": self.ids[i], "index": torch.tensor(i)}


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
