"""What the token-level language-model losses share: valid-token rows, float32 log-probabilities,
padded-vocabulary slicing and the one reduction rule.

The contract (``docs/lm.md``): ``student`` and ``teacher`` logits ``(B, T, V)`` (or rows ``(N, V)``),
``labels`` ``(B, T)`` with ``-100`` where a position is not scored; ``logits[:, j]`` is scored against
``labels[:, j]`` (the task already shifted them). A loss never shifts.

**Reduction.** Every LM loss returns the *mean over the valid tokens it was given*: the sum of a per-token
divergence over positions whose label is not ``-100``, divided by their count (0, with zero gradients,
when there are none). The trainer then weights each micro-batch by its share of the step's valid tokens,
counted over every micro-batch and every rank (:func:`distill.train.reduction.micro_batch_weights`), so
the step's gradient is the sum over all of the step's valid tokens divided by their global count,
whatever the accumulation and the number of processes.

**Numerics.** The math runs in float32 whatever the inputs' dtype (bf16 logits are upcast after the
valid rows are gathered). ``-inf`` logits (masked vocabulary entries) give probability 0 and contribute 0
instead of ``0 * inf = NaN``: log-probabilities are floored at the float32 minimum before any product.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses._common import positive
from distill.losses.base import DistillLoss

IGNORE_INDEX = -100
_FLOOR = torch.finfo(torch.float32).min  # log 0 as a finite number: exp() of it is exactly 0

# a divergence per token: (student log-probs, teacher log-probs), both (N, V) float32 -> (N,)
PerToken = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def valid_positions(
    labels: torch.Tensor | None, shape: torch.Size, name: str
) -> torch.Tensor | None:
    """Flat indices of the scored positions of logits ``shape`` ``(..., V)`` (None: all of them)."""
    if labels is None:
        return None
    if tuple(labels.shape) != tuple(shape[:-1]):
        raise DistillError(
            f"{name}: labels have shape {tuple(labels.shape)} but the logits {tuple(shape)}; pass the "
            "task's shifted targets (B, T) for logits (B, T, V) (causal_lm's 'labels' extra)"
        )
    return (labels.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)


def token_rows(
    logits: torch.Tensor, index: torch.Tensor | None, detach: bool = False
) -> torch.Tensor:
    """``(..., V) -> (N, V)`` float32 rows of the valid positions (``index``; None: every position)."""
    rows = logits.reshape(-1, logits.shape[-1])
    if detach:
        rows = rows.detach()
    if index is not None:
        rows = rows.index_select(0, index)
    return rows.float()


def match_vocab(
    student: torch.Tensor, teacher: torch.Tensor, vocab_size: int | None, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both logits cut to the tokenizer's ``vocab_size`` entries when given (a padded output head has
    rows past the tokenizer's length that no token ever takes); otherwise their last sizes must agree.

    Sizes that differ with no ``vocab_size``, or a ``vocab_size`` larger than either, mean the two
    models do not share one token->id map: that is refused, pointing to ``uld`` or sequence-level KD.
    """
    vs, vt = student.shape[-1], teacher.shape[-1]
    if vocab_size is not None:
        if vocab_size > min(vs, vt):
            raise DistillError(
                f"{name}: vocab_size={vocab_size} (the tokenizer's length) is larger than the student's "
                f"{vs} or the teacher's {vt} logits per token; the two models do not share this "
                "tokenizer: use the 'uld' loss or sequence-level KD (train on teacher-generated text)"
            )
        return student[..., :vocab_size], teacher[..., :vocab_size]
    if vs != vt:
        raise DistillError(
            f"{name}: the student has {vs} logits per token but the teacher {vt}; when only the output "
            "head is padded (same tokenizer), set the loss option vocab_size to the tokenizer's length "
            "(<= both); different tokenizers need the 'uld' loss or sequence-level KD"
        )
    return student, teacher


def padded_vocab_size(student_vocab: int, teacher_vocab: int, tokenizer_len: int) -> int | None:
    """The ``vocab_size`` to slice both heads to: None when they already agree with each other, the
    tokenizer's length when one or both heads are padded past it (``tokenizer_len <= both``)."""
    if student_vocab == teacher_vocab:
        return None
    if tokenizer_len <= min(student_vocab, teacher_vocab):
        return tokenizer_len
    raise DistillError(
        f"student head {student_vocab} and teacher head {teacher_vocab} differ and the tokenizer has "
        f"{tokenizer_len} tokens, more than one of them: the models do not share a tokenizer; use "
        "the 'uld' loss or sequence-level KD"
    )


def log_probs_of(rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 ``log_softmax(rows / T)`` with ``-inf`` floored to the float32 minimum (probability 0)."""
    scaled = rows.float() / temperature if temperature != 1.0 else rows.float()
    return F.log_softmax(scaled, dim=-1).clamp(min=_FLOOR)


def kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` per row, ``sum_v p_v (log p_v - log q_v)``, for floored log-probabilities: entries
    with ``p = 0`` add exactly 0."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def mixture_log_probs(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> torch.Tensor:
    """``log(weight_p * p + (1 - weight_p) * q)``, the mixture taken in probability space through
    ``logsumexp`` (never ``weight_p * log p + ...``, the log-space mixture TRL once shipped)."""
    w = torch.tensor(weight_p, dtype=log_p.dtype, device=log_p.device)
    pair = torch.stack([log_p + torch.log(w), log_q + torch.log1p(-w)])
    return torch.logsumexp(pair, dim=0).clamp(min=_FLOOR)


def mean_over_tokens(per_token: torch.Tensor) -> torch.Tensor:
    """The reduction rule of one micro-batch: sum over valid tokens / their count; 0 when there are
    none (the empty sum, still in the graph through the gathered rows: zero gradients, not NaN)."""
    return per_token.sum() / max(per_token.numel(), 1)


def token_divergence(
    per_token: PerToken,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    vocab_size: int | None,
    name: str,
) -> torch.Tensor:
    """``per_token`` divergence of the valid positions' softened distributions, averaged over them."""
    student_logits, teacher_logits = match_vocab(student_logits, teacher_logits, vocab_size, name)
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise DistillError(
            f"{name}: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} cover different positions; both models must score the "
            "same (B, T) tokens"
        )
    index = valid_positions(labels, student_logits.shape, name)
    s = log_probs_of(token_rows(student_logits, index), temperature)
    t = log_probs_of(token_rows(teacher_logits, index, detach=True), temperature)
    return mean_over_tokens(per_token(s, t))


def check_fraction(name: str, option: str, value: float, hint: str) -> float:
    """``value`` in [0, 1] as a float, else ``ValueError`` naming the loss, option, value and ``hint``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: {option} must be in [0, 1], got {value}; {hint}")
    return float(value)


def check_vocab_size(name: str, vocab_size: int | None) -> int | None:
    """``vocab_size`` (the tokenizer's length, for padded heads) is None or a positive integer."""
    if vocab_size is not None and (
        isinstance(vocab_size, bool) or int(vocab_size) != vocab_size or vocab_size < 1
    ):
        raise ValueError(
            f"{name}: vocab_size must be a positive integer (the tokenizer's length) or null, got "
            f"{vocab_size!r}"
        )
    return None if vocab_size is None else int(vocab_size)


class TokenLoss(DistillLoss):
    """A divergence between the student's and the teacher's next-token distributions on the valid
    positions: ``forward(student (B, T, V), teacher (B, T, V), labels (B, T))``, the mean over tokens
    whose label is not ``-100``. Subclasses set ``name`` and implement :meth:`per_token`.

    ``temperature`` softens both distributions for the loss only (no ``T^2`` factor, as TRL and
    torchtune); a sampling temperature for generation is a separate setting of the data mode.
    ``vocab_size`` (the tokenizer's length) cuts padded output heads to the real entries.
    """

    name: str = ""
    extra_inputs = ("labels",)
    needs_same_shape = False  # padded heads differ in V; match_vocab checks the rest

    def __init__(self, temperature: float = 1.0, vocab_size: int | None = None) -> None:
        super().__init__()
        self.temperature = positive(
            self.name, "temperature", temperature, "1 keeps the model's distribution"
        )
        self.vocab_size = check_vocab_size(self.name, vocab_size)

    def per_token(
        self, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return token_divergence(
            self.per_token, student, teacher, labels, self.temperature, self.vocab_size, self.name
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, vocab_size={self.vocab_size}"


# ------------------------------------------------------------------ a teacher's top-k (sparse losses)
MISSING_MASS = ("renormalise", "tail_bucket")


def topk_parts(teacher: Any, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(log_probs (..., k), ids (..., k), rest (...) or None)`` from the teacher input of a sparse
    loss: a list or tuple of those tensors (``rest``, the mass outside the top-k, is optional)."""
    if not isinstance(teacher, (list, tuple)) or len(teacher) not in (2, 3):
        raise DistillError(
            f"{name}: the teacher input must be the teacher's top-k as [log_probs (B, T, k), ids (B, T, k)"
            f", rest (B, T)], got {type(teacher).__name__}; tap a top-k teacher output, or use the dense "
            "loss (forward_kl, generalized_jsd, tvd) on @logits"
        )
    log_probs, ids = teacher[0], teacher[1]
    rest = teacher[2] if len(teacher) == 3 else None
    if log_probs.shape != ids.shape or (rest is not None and rest.shape != log_probs.shape[:-1]):
        raise DistillError(
            f"{name}: top-k log_probs {tuple(log_probs.shape)}, ids {tuple(ids.shape)} and rest "
            f"{None if rest is None else tuple(rest.shape)} do not fit; expected (B, T, k), (B, T, k), (B, T)"
        )
    return log_probs, ids, rest


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, floored (0 mass left is the float32 minimum, not -inf)."""
    x = x.clamp(max=-1e-7)
    out = torch.where(x > -0.693, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return out.clamp(min=_FLOOR)


def topk_buckets(
    student_logits: torch.Tensor,
    teacher: Any,
    labels: torch.Tensor | None,
    temperature: float,
    capture_temperature: float,
    missing: str,
    name: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probabilities over ``k + 1`` buckets per valid token, ``(N, k + 1)``:
    the teacher's top-k ids, then everything else.

    The student's are exact (its full softmax at ``temperature``, gathered; the last bucket is the rest
    of its mass). The teacher's top-k, stored at ``capture_temperature``, are re-tempered with
    ``alpha = capture_temperature / temperature`` (``p_i^alpha`` renormalised, DistillKit's
    ``get_target_logprobs``). ``missing``: ``renormalise`` scales the teacher's top-k to sum to 1 and gives
    its last bucket probability 0 (DistillKit's ``zero``); ``tail_bucket`` keeps the teacher's missing mass
    ``rest`` (or ``1 - sum``) as the last bucket (DistillKit's ``symmetric_uniform``)."""
    log_probs, ids, rest = topk_parts(teacher, name)
    if log_probs.shape[:-1] != student_logits.shape[:-1]:
        raise DistillError(
            f"{name}: student logits {tuple(student_logits.shape)} and teacher top-k "
            f"{tuple(log_probs.shape)} cover different positions; both must score the same (B, T) tokens"
        )
    index = valid_positions(labels, student_logits.shape, name)
    s_full = log_probs_of(token_rows(student_logits, index), temperature)
    k = log_probs.shape[-1]
    t_vals = token_rows(log_probs, index, detach=True)
    flat_ids = ids.reshape(-1, k)
    t_ids = (flat_ids if index is None else flat_ids.index_select(0, index)).long()
    s_top = s_full.gather(-1, t_ids)
    s_rest = s_full.scatter(-1, t_ids, _FLOOR).logsumexp(-1).clamp(min=_FLOOR)
    alpha = capture_temperature / temperature
    scaled = (alpha * t_vals).clamp(min=_FLOOR)
    if missing == "renormalise":
        t_top = scaled - scaled.logsumexp(-1, keepdim=True)
        t_rest = torch.full_like(s_rest, _FLOOR)
    else:
        if rest is not None:
            flat_rest = rest.detach().reshape(-1).float()
            flat_rest = flat_rest if index is None else flat_rest.index_select(0, index)
            log_rest = torch.log(flat_rest).clamp(min=_FLOOR)
        else:
            log_rest = _log1mexp(t_vals.logsumexp(-1))
        log_rest = (alpha * log_rest).clamp(min=_FLOOR)
        log_z = torch.logaddexp(scaled.logsumexp(-1), log_rest)
        t_top, t_rest = scaled - log_z[:, None], (log_rest - log_z)
    student = torch.cat([s_top, s_rest[:, None]], dim=-1)
    teacher_buckets = torch.cat([t_top, t_rest[:, None]], dim=-1).clamp(min=_FLOOR)
    return student, teacher_buckets.detach()


def check_missing(name: str, missing: str) -> str:
    if missing not in MISSING_MASS:
        raise ValueError(
            f"{name}: missing must be one of {list(MISSING_MASS)}, got {missing!r}; 'renormalise' scales "
            "the teacher's top-k to sum to 1, 'tail_bucket' keeps its missing mass as one more bucket"
        )
    return missing


class TopKLoss(DistillLoss):
    """A divergence between the student's full distribution and the teacher's top-k, over ``k + 1``
    buckets (:func:`topk_buckets`): ``forward(student (B, T, V), [log_probs, ids, rest], labels)``."""

    name: str = ""
    extra_inputs = ("labels",)
    needs_same_shape = False

    def __init__(
        self,
        missing: str = "renormalise",
        temperature: float = 1.0,
        capture_temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.missing = check_missing(self.name, missing)
        self.temperature = positive(
            self.name, "temperature", temperature, "1 keeps the model's distribution"
        )
        self.capture_temperature = positive(
            self.name,
            "capture_temperature",
            capture_temperature,
            "the temperature the top-k were stored at",
        )

    def per_token(
        self, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, student: torch.Tensor, teacher: Any, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = topk_buckets(
            student,
            teacher,
            labels,
            self.temperature,
            self.capture_temperature,
            self.missing,
            self.name,
        )
        return mean_over_tokens(self.per_token(s, t))

    @staticmethod
    def example_inputs(batch_size: int, generator: torch.Generator) -> tuple[Any, Any]:
        """Student logits (B, 6, 10) and the top-4 of other teacher logits."""
        student = torch.randn(batch_size, 6, 10, generator=generator)
        teacher = F.log_softmax(2 * torch.randn(batch_size, 6, 10, generator=generator), dim=-1)
        values, ids = teacher.topk(4, dim=-1)
        return student, [values, ids, 1 - values.exp().sum(-1)]

    def extra_repr(self) -> str:
        return (
            f"missing={self.missing!r}, temperature={self.temperature}, "
            f"capture_temperature={self.capture_temperature}"
        )
