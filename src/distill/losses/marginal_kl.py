"""Cross-tokenizer KD on the teacher's next-character distribution marginalised over its own token
boundaries: the exact character-level probabilities of a tokenized LM (Phan et al., "Understanding and
Mitigating Tokenization Bias in Language Models", 2024), one token deep, as a forward-KL target for a
student of a finer tokenizer (characters: every position of the student row).

At a teacher token boundary the teacher's next-token distribution is conditioned on the boundary (its
tokenizer ended the previous token because it does not continue), so ``aligned_kl``'s target there is
biased for a student that cannot see the teacher's boundaries. Here the target at student position
``j`` comes from the teacher row ``a`` *before* the token covering the position (``teacher_anchor``),
with ``u`` the text read since (``teacher_prefix``, a row of the prefix table of
:mod:`distill.data.lm_marginal`) and ``p = softmax(teacher_logits[a] / temperature)``:

    q(k) ∝ sum_{w: w starts with u, longer, key(w[len(u):]) = k} p(w) + p(u) * Q(k)

``key`` maps a remainder to the student id of the longest shared string it starts with (the next
character for a character student). ``Q`` is what follows when the token is exactly ``u``: the
teacher's keyed distribution at the boundary (``teacher_position``, as in ``aligned_kl``) where the
teacher's token does end there, else the student's own distribution, detached (that share of the
target carries no teacher information and pulls nowhere). Loss ``KL(q || p_S)``, summed over the
positions with an anchor and divided by the number of valid student targets (``docs/lm.md``).
"""

from __future__ import annotations

import torch

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses._common import positive
from distill.losses._lm import IGNORE_INDEX, DistillLoss, kl_rows, log_probs_of
from distill.losses.aligned_kl import keyed_log_probs

_FLOOR = torch.finfo(torch.float32).min


def marginal_targets(
    anchor_log_p: torch.Tensor,
    remainder_key: torch.Tensor,
    prefix_token: torch.Tensor,
    after: torch.Tensor,
    slots: int,
) -> torch.Tensor:
    """``(N, slots)`` target probabilities: the anchor rows' mass on tokens continuing each prefix, by
    remainder key, plus the prefix token's own mass times ``after`` (``(N, slots)`` probabilities),
    renormalised."""
    p = anchor_log_p.exp()
    index = torch.where(remainder_key < 0, slots, remainder_key)
    target = torch.zeros(p.shape[0], slots + 1, dtype=p.dtype, device=p.device)
    target = target.scatter_add(1, index, p)[:, :slots]
    own = p.gather(1, prefix_token.clamp_min(0)[:, None]) * (prefix_token >= 0)[:, None]
    target = target + own * after
    return target / target.sum(-1, keepdim=True).clamp_min(1e-30)


def marginal_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_anchor: torch.Tensor,
    teacher_prefix: torch.Tensor,
    teacher_position: torch.Tensor,
    teacher_vocab_key: torch.Tensor,
    prefix_keys: torch.Tensor,
    prefix_token: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Forward KL to the marginal next-token target, summed over anchored positions and divided by the
    number of valid student targets; shapes as in the module docstring."""
    (B, T, Vs), (Tt, Vt) = student_logits.shape, teacher_logits.shape[1:]
    if not labels.shape == teacher_anchor.shape == teacher_prefix.shape == (B, T):
        raise DistillError(
            f"marginal_kl: labels, teacher_anchor and teacher_prefix must be (B, T) = {(B, T)} of the "
            "student logits; use paired data whose tokenizers give offsets (shakespeare "
            "teacher_tokenizer)"
        )
    if prefix_keys.shape[-1] != Vt or teacher_vocab_key.shape != (Vt,):
        raise DistillError(
            f"marginal_kl: the prefix table covers {prefix_keys.shape[-1]} teacher tokens but the "
            f"teacher has {Vt} logits; build the teacher for the data's tokenizer"
        )
    valid = labels != IGNORE_INDEX
    rows = valid & (teacher_anchor >= 0) & (teacher_anchor < Tt) & (teacher_prefix >= 0)
    b, j = rows.nonzero(as_tuple=True)
    teacher = teacher_logits.detach()
    s = log_probs_of(student_logits[b, j], temperature)
    anchor = log_probs_of(teacher[b, teacher_anchor[b, j]], temperature)
    boundary = teacher_position[b, j]
    ends_here = (boundary >= 0) & (boundary < Tt)
    at_boundary = log_probs_of(teacher[b, boundary.clamp(0, Tt - 1)], temperature)
    keyed = keyed_log_probs(at_boundary, teacher_vocab_key, Vs).exp()
    after = torch.where(ends_here[:, None], keyed, s.detach().exp())
    prefix = teacher_prefix[b, j]
    target = marginal_targets(anchor, prefix_keys[prefix], prefix_token[prefix], after, Vs)
    log_target = target.clamp_min(1e-38).log().masked_fill(target <= 0, _FLOOR)
    return kl_rows(log_target, s).sum() / valid.sum().clamp_min(1)


@LOSSES.register(
    "marginal_kl",
    paper="Phan et al., Understanding and Mitigating Tokenization Bias in Language Models "
    "(character-level marginal of a tokenized teacher)",
    year=2024,
    kind="logit",
    consumes="next-token logits of two tokenizers + labels + the data's boundary marginal tables",
    inputs="token_logits",
    identity=None,
    taps="@logits",
    weight="1 next to the task loss",
)
class MarginalKLLoss(DistillLoss):
    """Forward KL to the teacher's next-character distribution marginalised over its boundaries."""

    extra_inputs = (
        "labels",
        "teacher_anchor",
        "teacher_prefix",
        "teacher_position",
        "teacher_vocab_key",
        "prefix_keys",
        "prefix_token",
    )
    needs_same_shape = False

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = positive("marginal_kl", "temperature", temperature, "use 1")

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        labels: torch.Tensor,
        teacher_anchor: torch.Tensor,
        teacher_prefix: torch.Tensor,
        teacher_position: torch.Tensor,
        teacher_vocab_key: torch.Tensor,
        prefix_keys: torch.Tensor,
        prefix_token: torch.Tensor,
    ) -> torch.Tensor:
        return marginal_kl(
            student, teacher, labels, teacher_anchor, teacher_prefix, teacher_position,
            teacher_vocab_key, prefix_keys, prefix_token, self.temperature,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
