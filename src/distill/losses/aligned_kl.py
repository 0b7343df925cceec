"""Cross-tokenizer KD on character-aligned positions: forward KL over the outcomes both vocabularies
share, ULD (Boizard et al., arXiv 2024, TMLR 2025) on the mass they do not; the hybrid of TRL's GOLD trainer
(``uld_use_hybrid_loss``: matched vocabulary compared directly, the rest by sorted probabilities),
with the positions aligned by character offsets instead of by index.

The data carries the alignment (:mod:`distill.data.lm_align`; ``causal_lm`` hands it over):
``teacher_position`` ``(B, T)``, the teacher row that has read exactly the text student row ``j`` has
read (``-1``: none), and the vocabulary keys ``student_vocab_key`` ``(Vs,)`` / ``teacher_vocab_key``
``(Vt,)``, the student id of the longest string both vocabularies hold that each token starts with
(``-1``: none). At an aligned position, with ``p = softmax(logits / temperature)``:

* both distributions are summed by key, ``q(k) = sum_{v: key(v) = k} p(v)``, the probability that the
  next token starts with shared string ``k``, renormalised over the keys (given that the next token
  starts with one of them; a token of one vocabulary that starts with nothing shared, such as a
  character the other tokenizer never saw, has no counterpart event), and scored with
  ``KL(q_T || q_S)``. With one tokenizer on both sides the keys are the identity and this is the plain
  forward KL; for a character student (or teacher) it is the KL between the two models'
  next-character distributions, each model's given the text it has read *and its own token boundary
  there*: a subword teacher's boundary tells it that its previous token does not continue (the
  tokenization bias of Phan et al., 2024), which the student cannot see (docs/benchmarks/lm.md).
* the unkeyed tokens' probabilities (``p_S`` over student ids keyed ``-1``, ``p_T`` over teacher ids
  keyed ``-1``) are compared by ULD, ``sum_i |p_S,(i) - p_T,(i)|`` over the sorted, zero-padded
  vectors, weighted by ``uld_weight``.

Positions without alignment add 0. The sum is divided by the number of valid student targets (the
causal-LM reduction rule, ``docs/lm.md``), so the trainer's per-token weighting across micro-batches
and ranks is exact; the term is smaller than a plain KL by the share of aligned positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses._common import positive
from distill.losses._lm import IGNORE_INDEX, DistillLoss, kl_rows, log_probs_of

_FLOOR = torch.finfo(torch.float32).min


def keyed_log_probs(log_p: torch.Tensor, key: torch.Tensor, slots: int) -> torch.Tensor:
    """``(N, slots)``: ``log q(k)``, ``q(k) = sum_{v: key(v) = k} p(v)`` renormalised over the slots
    (tokens keyed ``-1`` left out); an empty slot is the float32 floor (probability 0). Log-sum-exps,
    so small probabilities do not underflow."""
    index = torch.where(key < 0, slots, key).expand_as(log_p)
    top = torch.full((log_p.shape[0], slots + 1), _FLOOR, dtype=log_p.dtype, device=log_p.device)
    top = top.scatter_reduce(1, index, log_p.detach(), "amax").detach()
    summed = torch.zeros_like(top).scatter_add(1, index, (log_p - top.gather(1, index)).exp())
    keyed = (top + summed.clamp_min(1e-38).log())[:, :slots]
    return (keyed - keyed.logsumexp(-1, keepdim=True)).clamp(min=_FLOOR)


def sorted_l1(student_p: torch.Tensor, teacher_p: torch.Tensor) -> torch.Tensor:
    """ULD per row: ``sum_i |s_(i) - t_(i)|`` over the sorted, zero-padded probability vectors."""
    width = max(student_p.shape[-1], teacher_p.shape[-1])
    if width == 0:
        return student_p.new_zeros(student_p.shape[0])
    s = F.pad(student_p.sort(dim=-1, descending=True).values, (0, width - student_p.shape[-1]))
    t = F.pad(teacher_p.sort(dim=-1, descending=True).values, (0, width - teacher_p.shape[-1]))
    return (s - t).abs().sum(-1)


def aligned_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_position: torch.Tensor,
    student_vocab_key: torch.Tensor,
    teacher_vocab_key: torch.Tensor,
    temperature: float = 1.0,
    uld_weight: float = 1.0,
) -> torch.Tensor:
    """Keyed forward KL + ``uld_weight`` x ULD of the unkeyed mass, summed over aligned positions and
    divided by the number of valid student targets; shapes as in the module docstring."""
    (B, T, Vs), Vt = student_logits.shape, teacher_logits.shape[-1]
    if labels.shape != (B, T) or teacher_position.shape != (B, T):
        raise DistillError(
            f"aligned_kl: labels {tuple(labels.shape)} and teacher_position "
            f"{tuple(teacher_position.shape)} must both be (B, T) = {(B, T)} of the student logits; "
            "use paired data whose tokenizers give offsets (shakespeare teacher_tokenizer)"
        )
    if student_vocab_key.shape != (Vs,) or teacher_vocab_key.shape != (Vt,):
        raise DistillError(
            f"aligned_kl: vocabulary keys {tuple(student_vocab_key.shape)} and "
            f"{tuple(teacher_vocab_key.shape)} do not fit logits of {Vs} and {Vt} entries; build "
            "the models for the data's tokenizers (teacher.options.num_classes)"
        )
    valid = labels != IGNORE_INDEX
    rows = valid & (teacher_position >= 0) & (teacher_position < teacher_logits.shape[1])
    batch_index, student_index = rows.nonzero(as_tuple=True)
    teacher_index = teacher_position[batch_index, student_index]
    s = log_probs_of(student_logits[batch_index, student_index], temperature)
    t = log_probs_of(teacher_logits.detach()[batch_index, teacher_index], temperature)
    per_token = kl_rows(
        keyed_log_probs(t, teacher_vocab_key, Vs), keyed_log_probs(s, student_vocab_key, Vs)
    )
    if uld_weight:
        rest = sorted_l1(s.exp()[:, student_vocab_key < 0], t.exp()[:, teacher_vocab_key < 0])
        per_token = per_token + uld_weight * rest
    return per_token.sum() / valid.sum().clamp_min(1)


@LOSSES.register(
    "aligned_kl",
    paper="Boizard et al., Towards Cross-Tokenizer Distillation: the Universal Logit Distillation "
    "Loss for LLMs (ULD), with GOLD's hybrid (TRL) on character-aligned positions",
    year=2024,
    kind="logit",
    consumes="next-token logits of two tokenizers + labels + the data's character alignment",
    inputs="token_logits",
    identity="zero",
    taps="@logits",
    weight="1 next to the task loss",
)
class AlignedKLLoss(DistillLoss):
    """Forward KL over the shared-string outcomes at character-aligned positions, ULD on the rest."""

    extra_inputs = ("labels", "teacher_position", "student_vocab_key", "teacher_vocab_key")
    needs_same_shape = False

    def __init__(self, temperature: float = 1.0, uld_weight: float = 1.0) -> None:
        super().__init__()
        self.temperature = positive("aligned_kl", "temperature", temperature, "use 1")
        if (
            not isinstance(uld_weight, int | float)
            or isinstance(uld_weight, bool)
            or uld_weight < 0
        ):
            raise DistillError(
                f"aligned_kl: uld_weight={uld_weight!r} must be a number >= 0; use 1 (0: KL only)"
            )
        self.uld_weight = float(uld_weight)

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        labels: torch.Tensor,
        teacher_position: torch.Tensor,
        student_vocab_key: torch.Tensor,
        teacher_vocab_key: torch.Tensor,
    ) -> torch.Tensor:
        return aligned_kl(
            student,
            teacher,
            labels,
            teacher_position,
            student_vocab_key,
            teacher_vocab_key,
            self.temperature,
            self.uld_weight,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, uld_weight={self.uld_weight}"
