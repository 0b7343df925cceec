"""Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
Transformers", NeurIPS 2020; and Wang et al., "MiniLMv2: Multi-Head Self-Attention Relation
Distillation for Compressing Pretrained Transformers", Findings of ACL 2021.

MiniLM transfers the self-attention module of the teacher's *last* layer to the student's last layer,
through two KL divergences averaged over heads ``a`` and real query positions ``t`` (paper Eq. 6-8):

    L_AT = 1/(A |x|) sum_a sum_t KL( A_t[a, t] || A_s[a, t] )                attention distributions
    L_VR = 1/(A |x|) sum_a sum_t KL( VR_t[a, t] || VR_s[a, t] ),  VR = softmax(V_a V_a^T / sqrt(d_k))
    L = L_AT + L_VR

The term's taps are lists of two: ``[@attentions.L, <value projection>]`` on each side, where the value
projection is a module tap giving ``(B, T, H)`` (``encoder.layer.L.attention.self.value`` in Hugging
Face BERT); the values are split into as many heads as the attention tensor has. Only the ``(T, T)``
relations are compared, so the hidden sizes may differ, but the head counts must match (as in the
paper). Padded tokens (``attention_mask`` 0) are excluded as keys and as queries; per sequence the KL is
averaged over heads and real queries (``|x|`` = its length), then over the batch, as the MiniLMv2 port
of Bloomberg (``minilmv2.bb``, ``_get_kl_loss``) does. The authors released no training code.

``relation_heads=k`` switches to MiniLMv2: the taps are ``[queries, keys, values]`` (the three
projections' outputs, ``(B, T, H)`` each), each is split into ``k`` *relation heads* on both sides (so
student and teacher head counts may differ), and the loss is the sum of the Q-Q, K-K and V-V relation
KLs, each ``softmax(X_a X_a^T / sqrt(d_r))`` as above (MiniLMv2's objective with equal relation weights;
Bloomberg's port weights each 1/3, the same up to the term's weight). Paper settings:
k = 48 relation heads for base-size teachers (64 for large); the teacher layer may be an upper-middle
one rather than the last.

Notes: attention maps from Hugging Face are probabilities; their logarithm is floored at 1e-12 where a
probability underflows. Attention dropout makes the student's training-mode probabilities noisy (HF
returns them after dropout): set the student's ``attention_probs_dropout_prob`` to 0 for this term.
Weight 1 (the paper's objective is the plain sum; used task-agnostically, or next to a task loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses._common import check_attentions, token_mask
from distill.losses.base import DistillLoss

PROB_FLOOR = 1e-12


def _row_mean(kl: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``kl`` (B, heads, T) per query -> mean over heads and real queries per sequence, then batch."""
    if mask is None:
        return kl.mean()
    rows = mask[:, None, :].to(kl.dtype)  # (B, 1, T)
    per_sequence = (kl * rows).sum((1, 2)) / (kl.shape[1] * rows.sum((1, 2)).clamp(min=1))
    return per_sequence.mean()


def attention_kl(
    student_probs: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """``KL(A_t || A_s)`` of attention probabilities ``(B, heads, T, T)`` over real keys, averaged
    over heads and real queries (``mask`` (B, T) bool or None)."""
    s, t = student_probs.float(), teacher_probs.detach().float()
    if mask is not None:  # padded keys and queries: p = 0, q = 1 (no contribution, no NaN)
        pair = mask[:, None, :, None] & mask[:, None, None, :]
        s, t = s.masked_fill(~pair, 1.0), t.masked_fill(~pair, 0.0)
    kl = F.kl_div(torch.log(s.clamp(min=PROB_FLOOR)), t, reduction="none").sum(-1)
    return _row_mean(kl, mask)


def relation_log_probs(x: torch.Tensor, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    """``(B, T, H) -> (B, heads, T, T)``: ``log_softmax(X_a X_a^T / sqrt(H / heads))`` per head, padded
    keys excluded."""
    batch, length, width = x.shape
    if width % heads:
        raise DistillError(
            f"minilm: width {width} does not split into {heads} heads; pick a head count dividing it"
        )
    if mask is not None:
        x = x.masked_fill(~mask[:, :, None], 0.0)
    xh = x.reshape(batch, length, heads, width // heads).transpose(1, 2)  # (B, heads, T, d)
    scores = xh @ xh.transpose(-1, -2) / math.sqrt(width // heads)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def relation_kl(
    student: torch.Tensor,
    teacher: torch.Tensor,
    heads: int,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """KL between the teacher's and the student's self-relations of ``(B, T, H)`` vectors."""
    log_q = relation_log_probs(student.float(), heads, mask)
    log_p = relation_log_probs(teacher.detach().float(), heads, mask)
    kl = F.kl_div(log_q, log_p, reduction="none", log_target=True)
    if mask is not None:
        kl = kl.masked_fill(~mask[:, None, None, :], 0.0)
    return _row_mean(kl.sum(-1), mask)


def _sequences(tensors: list[torch.Tensor], side: str, length: int) -> None:
    for x in tensors:
        if x.ndim != 3 or x.shape[1] != length:
            raise DistillError(
                f"minilm: {side} tap has shape {tuple(x.shape)}, expected token vectors (B, {length}, H) "
                "(a query/key/value projection's output)"
            )


@LOSSES.register(
    "minilm",
    paper="Wang et al., MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of "
    "Pre-Trained Transformers, NeurIPS (and MiniLMv2, Findings of ACL 2021)",
    year=2020,
    kind="relation",
    consumes="last-layer attention distributions and value relations (MiniLMv2: Q-Q, K-K, V-V "
    "relations with their own head count)",
    inputs="attention_relations",
    identity="zero",
    taps="[@attentions.L, encoder.layer.L.attention.self.value] on each side; MiniLMv2: "
    "[...query, ...key, ...value] with relation_heads",
    weight="1 (the paper's objective is L_AT + L_VR)",
)
class MiniLMLoss(DistillLoss):
    """MiniLM's attention-distribution + value-relation KL (or MiniLMv2's Q/K/V relations)."""

    extra_inputs = ("attention_mask",)
    needs_same_shape = False  # only (T, T) relations are compared

    def __init__(self, relation_heads: int | None = None) -> None:
        super().__init__()
        if relation_heads is not None and (
            isinstance(relation_heads, bool)
            or not isinstance(relation_heads, int)
            or relation_heads < 1
        ):
            raise ValueError(
                f"minilm: relation_heads must be a positive integer or null (MiniLM v1), got "
                f"{relation_heads!r}; MiniLMv2 uses 48 for base-size teachers"
            )
        self.relation_heads = relation_heads

    @staticmethod
    def example_inputs(batch_size: int, generator: torch.Generator):
        """``[attention probabilities (B, 2, 6, 6), values (B, 6, H)]``, H = 8 student, 16 teacher."""

        def probs() -> torch.Tensor:
            return torch.randn(batch_size, 2, 6, 6, generator=generator).softmax(-1)

        def values(width: int) -> torch.Tensor:
            return torch.randn(batch_size, 6, width, generator=generator)

        return [probs(), values(8)], [probs(), values(16)]

    def build(
        self, student: list[torch.Tensor], teacher: list[torch.Tensor], **context: object
    ) -> None:
        """Nothing to create; checks the example taps (structure, head counts) before training starts."""
        with torch.no_grad():
            self.forward(student, teacher)

    def forward(
        self,
        student: list[torch.Tensor],
        teacher: list[torch.Tensor],
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        wanted = 2 if self.relation_heads is None else 3
        if (
            not isinstance(student, list | tuple)
            or len(student) != wanted
            or len(teacher) != wanted
        ):
            what = (
                "[attentions, values]" if self.relation_heads is None else "[queries, keys, values]"
            )
            raise DistillError(
                f"minilm: the term's student and teacher taps must each be a list {what} "
                f"({wanted} taps), got {len(student) if isinstance(student, list | tuple) else 1}"
            )
        with torch.autocast(student[0].device.type, enabled=False):
            if self.relation_heads is None:
                return self._v1(student, teacher, attention_mask)
            return self._v2(student, teacher, attention_mask)

    def _v1(self, student, teacher, attention_mask) -> torch.Tensor:
        (att_s, val_s), (att_t, val_t) = student, teacher
        check_attentions(att_s, att_t, "minilm")
        length = att_s.shape[-1]
        _sequences([val_s], "student", length)
        _sequences([val_t], "teacher", length)
        mask = token_mask(attention_mask, att_s.shape[0], length)
        heads = att_s.shape[1]
        return attention_kl(att_s, att_t, mask) + relation_kl(val_s, val_t, heads, mask)

    def _v2(self, student, teacher, attention_mask) -> torch.Tensor:
        length = student[0].shape[1] if student[0].ndim == 3 else -1
        _sequences(list(student), "student", length)
        _sequences(list(teacher), "teacher", length)
        mask = token_mask(attention_mask, student[0].shape[0], length)
        heads = self.relation_heads
        return sum(relation_kl(s, t, heads, mask) for s, t in zip(student, teacher, strict=True))

    def extra_repr(self) -> str:
        return f"relation_heads={self.relation_heads}"
