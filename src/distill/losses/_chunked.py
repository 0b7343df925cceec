"""A token loss that never materialises ``(B, T, V)`` logits: the chunked path for large vocabularies.

The student's and the teacher's last hidden states ``(B, T, D)`` and their output heads' weights
``(V, D)`` go in instead of logits. The valid positions (label not ``-100``) are gathered first, then
taken ``chunk_size`` tokens at a time through both heads; each chunk's logits, log-probabilities and
divergence live only while that chunk is processed. The chunk's gradients with respect to the student's
hidden rows and head weight are worked out right there (``torch.autograd.grad`` on the chunk), so the
backward pass only scales what was kept: ``(N, D)`` and ``(V, D)``, never ``(N, V)``. That is the
recomputation-free variant of recomputing each chunk in backward (one pass over the logits instead of
two; Liger's fused linear cross-entropy does the same); it gives the plain path's values and gradients
because the per-token divergence of one token depends on that token's logits only.

Same reduction rule as the plain losses: the sum over valid tokens divided by their count (0, with zero
gradients, for none). Output heads without bias (the lm_head of GPT-2, Llama, Qwen).

Recipes turn it on per term with ``chunk_size`` (:class:`ChunkedTokenLoss`; docs/lm_losses.md).
"""

from __future__ import annotations

from typing import Any

import torch

from distill.errors import DistillError
from distill.losses._lm import PerToken, TokenLoss, log_probs_of, valid_positions
from distill.losses.base import DistillLoss


class _ChunkedDivergence(torch.autograd.Function):
    """``sum_n per_token(n) / N`` over compacted rows, its gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(
        ctx: Any,
        student_rows: torch.Tensor,
        student_weight: torch.Tensor,
        teacher_rows: torch.Tensor,
        teacher_weight: torch.Tensor,
        per_token: PerToken,
        temperature: float,
        vocab_size: int,
        chunk_size: int,
    ) -> torch.Tensor:
        count = student_rows.shape[0]
        leaf_weight = student_weight[:vocab_size].detach().requires_grad_(True)
        teacher_w = teacher_weight.detach()[:vocab_size]
        grad_rows = torch.zeros_like(student_rows, dtype=torch.float32)
        grad_weight = torch.zeros_like(student_weight, dtype=torch.float32)
        total = torch.zeros((), dtype=torch.float32, device=student_rows.device)
        for start in range(0, count, chunk_size):
            stop = min(start + chunk_size, count)
            with torch.no_grad():
                teacher_logits = teacher_rows[start:stop].detach() @ teacher_w.T
                teacher_lp = log_probs_of(teacher_logits, temperature)
                del teacher_logits
            rows = student_rows[start:stop].detach().requires_grad_(True)
            with torch.enable_grad():
                student_lp = log_probs_of(rows @ leaf_weight.T, temperature)
                chunk_loss = per_token(student_lp, teacher_lp).sum()
                grad_chunk, grad_w = torch.autograd.grad(chunk_loss, (rows, leaf_weight))
            total += chunk_loss.detach()
            grad_rows[start:stop] = grad_chunk
            grad_weight[:vocab_size] += grad_w
            del student_lp, teacher_lp, chunk_loss
        scale = 1.0 / max(count, 1)
        ctx.save_for_backward(grad_rows * scale, grad_weight * scale)
        ctx.dtypes = (student_rows.dtype, student_weight.dtype)
        return total * scale

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        grad_rows, grad_weight = ctx.saved_tensors
        rows_dtype, weight_dtype = ctx.dtypes
        return (
            (grad_rows * grad_output).to(rows_dtype),
            (grad_weight * grad_output).to(weight_dtype),
            None,
            None,
            None,
            None,
            None,
            None,
        )


def chunked_token_loss(
    per_token: PerToken,
    student_hidden: torch.Tensor,
    student_head: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    chunk_size: int = 1024,
    name: str = "chunked",
) -> torch.Tensor:
    """``per_token`` divergence of ``softmax(hidden @ head.T / temperature)``, mean over valid tokens,
    without ``(B, T, V)`` logits. ``student_hidden`` ``(B, T, D)``, ``student_head`` ``(V, D)`` (the
    lm_head weight), the teacher's likewise ``(B, T, D_t)``, ``(V_t, D_t)``; ``vocab_size`` cuts padded
    heads to the tokenizer's length (``V`` and ``V_t`` must otherwise agree)."""
    vs, vt = student_head.shape[0], teacher_head.shape[0]
    width = vocab_size if vocab_size is not None else vs
    if (vocab_size is None and vs != vt) or width > min(vs, vt):
        raise DistillError(
            f"{name}: student head has {vs} rows and teacher head {vt} (vocab_size={vocab_size}); set "
            "vocab_size to the tokenizer's length when a head is padded; different tokenizers need 'uld'"
        )
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise DistillError(
            f"{name}: student hidden states {tuple(student_hidden.shape)} and teacher hidden states "
            f"{tuple(teacher_hidden.shape)} cover different positions"
        )
    if chunk_size < 1:
        raise DistillError(f"{name}: chunk_size must be >= 1, got {chunk_size}")
    shape = (*student_hidden.shape[:-1], width)
    index = valid_positions(labels, torch.Size(shape), name)
    s_rows = student_hidden.reshape(-1, student_hidden.shape[-1])
    t_rows = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    if index is not None:
        s_rows, t_rows = s_rows.index_select(0, index), t_rows.index_select(0, index)
    return _ChunkedDivergence.apply(
        s_rows, student_head, t_rows, teacher_head, per_token, temperature, width, chunk_size
    )


class ChunkedTokenLoss(DistillLoss):
    """A token loss (``forward_kl``, ``generalized_jsd``...) on the chunked path: the recipe's term
    ``chunk_size``. The student and the teacher each give ``[hidden (B, T, D), head weight (V, D)]``
    (``causal_lm``'s ``@lm_hidden`` and ``@lm_head``) instead of ``@logits``; the value and gradients
    are the plain term's (:meth:`TokenLoss.chunked <distill.losses._lm.TokenLoss.chunked>`)."""

    extra_inputs = ("labels",)
    needs_same_shape = False  # hidden widths and head rows may differ; chunked_token_loss checks

    def __init__(self, loss: TokenLoss, chunk_size: int = 1024) -> None:
        super().__init__()
        if chunk_size < 1:
            raise DistillError(f"{loss.name}: chunk_size must be >= 1, got {chunk_size}")
        self.loss, self.chunk_size = loss, int(chunk_size)

    def forward(
        self, student: list[torch.Tensor], teacher: list[torch.Tensor], labels: torch.Tensor
    ) -> torch.Tensor:
        (student_hidden, student_head), (teacher_hidden, teacher_head) = student, teacher
        return self.loss.chunked(
            student_hidden, student_head, teacher_hidden, teacher_head, labels, self.chunk_size
        )

    def extra_repr(self) -> str:
        return f"chunk_size={self.chunk_size}"
