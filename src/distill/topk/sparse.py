"""The math of a top-k teacher distribution: capture, rebuild, re-temper (see the package docstring)."""

from __future__ import annotations

import math

import torch

from distill.errors import DistillError
from distill.tasks.base import Batch


# ------------------------------------------------------------------------------------------------ math
def topk_of(
    logits: torch.Tensor, k: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logprobs (..., k), ids (..., k) int32, rest (...))`` of ``log_softmax(logits / temperature)``,
    computed in float32: the top-k log-probabilities, largest first, and the mass outside them."""
    if k > logits.shape[-1]:
        raise DistillError(
            f"distill.topk_cache.k={k} is more than the teacher's {logits.shape[-1]} vocabulary "
            f"ids; use k <= {logits.shape[-1]} (8 to 64 keep almost all of the mass)"
        )
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    values, ids = logp.topk(k, dim=-1)
    # the tail's own sum, not 1 - sum(top-k): that cancels to noise when the tail is small
    rest = logp.scatter(-1, ids, -math.inf).logsumexp(-1).exp()
    return values, ids.to(torch.int32), rest


def dense_logits(
    logprobs: torch.Tensor,
    ids: torch.Tensor,
    rest: torch.Tensor,
    vocab_size: int,
    capture_temperature: float = 1.0,
) -> torch.Tensor:
    """``(..., vocab_size)`` float32 logits equal to the teacher's up to a per-row constant on the top-k
    ids (``T_c * log p_c``), the tail mass ``rest`` spread evenly over the other ids (see the module
    docstring for what that means at another temperature)."""
    k = logprobs.shape[-1]
    if k >= vocab_size:
        tail = torch.full_like(rest, -math.inf, dtype=torch.float32)
    else:
        tail = torch.log(rest.float().clamp_min(1e-30) / (vocab_size - k))
    out = tail.unsqueeze(-1).expand(*rest.shape, vocab_size).clone()
    out.scatter_(-1, ids.long(), logprobs.float())
    return out * capture_temperature


def retemper(
    logprobs: torch.Tensor,
    ids: torch.Tensor,
    rest: torch.Tensor,
    vocab_size: int,
    capture_temperature: float,
    temperature: float,
) -> torch.Tensor:
    """``(..., vocab_size)`` log-probabilities at ``temperature`` from top-k ones stored at
    ``capture_temperature``: ``log_softmax(T_c * log p_c / T)`` over :func:`dense_logits`."""
    logits = dense_logits(logprobs, ids, rest, vocab_size, capture_temperature)
    return torch.log_softmax(logits / temperature, dim=-1)


def token_rows(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids (B, T), lengths (B,))`` of a causal-LM batch: ``inputs`` is the ids or a mapping with
    ``input_ids`` (and an ``attention_mask`` of right padding); a sample's rows are its first ``length``."""
    inputs = batch.inputs
    ids = inputs["input_ids"] if isinstance(inputs, dict) else inputs
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise DistillError(
            "distill.topk_cache needs causal-LM batches whose inputs are token ids (B, T) or a "
            f"mapping with input_ids; got {type(ids).__name__}; use task: causal_lm"
        )
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    if mask is None:
        return ids, torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long)
    lengths = mask.long().sum(-1)
    prefix = torch.arange(ids.shape[1], device=mask.device) < lengths.unsqueeze(-1)
    if not torch.equal(prefix, mask.bool()):
        raise DistillError(
            "distill.topk_cache reads right-padded batches only (attention_mask 1...1 0...0); "
            "set the tokenizer's padding side to right"
        )
    return ids, lengths.cpu()
