"""Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020.

CRD makes the student's representation carry as much information about the teacher's as possible: a
contrastive (noise-contrastive estimation, NCE) objective tells the pair (teacher, student) of the same
input apart from pairs of different inputs, which maximises a lower bound on their mutual information.

Both penultimate embeddings go through a trainable head, a linear layer and L2 normalisation to
``feat_dim`` dimensions: ``s = g_s(f_s)``, ``t = g_t(f_t)``. A memory bank per side keeps one embedding
per training sample (``m^s``, ``m^t``: ``num_samples x feat_dim``). For sample ``i`` and ``K`` negatives
``j`` drawn from the other training samples, with ``M = num_samples``:

    P(i, j) = exp(<s_i, m^t_j> / tau) / Z          Z = M * mean(exp(<s, m^t> / tau)), set on the first batch
    D(i, j) = P(i, j) / (P(i, j) + K / M)           the probability that (i, j) came from the data, not noise
    L_s = -mean_i [ log D(i, i) + sum_j log(1 - D(i, j)) ]

and ``L_t`` the same with the teacher embedding as anchor against the student bank; ``L = L_s + L_t``.
After each step the banks move towards the new embeddings: ``m_i <- normalise(momentum * m_i +
(1 - momentum) * e_i)``. The banks are buffers: saved in checkpoints (resume is exact), never exported
with the student.

Defaults (the paper's, as in the authors' RepDistiller and in mdistiller): ``feat_dim=128``,
``num_negatives=16384`` (clamped to ``num_samples - 1`` for small data sets), ``temperature=0.07``,
``momentum=0.5``.

Practical notes:

* taps: the penultimate (pooled) features of both models, e.g. ``pool`` for the zoo CNN (``@logits``
  works too); feature maps are flattened. Shapes may differ: each side has its own head.
* needs the sample index of each example (``extra_inputs = ("index",)``; distill's datasets provide it)
  and the training-set size, which the trainer passes to ``build(..., num_samples=...)``.
* weight 0.8 next to a cross-entropy of weight 1 (RepDistiller, mdistiller); the paper's best setting,
  "CRD+KD", adds the ``kd`` term with weight 1 (RepDistiller's script: ``-r 1 -a 1 -b 0.8``, T=4).
* memory: two banks of ``num_samples x feat_dim`` float32 (61 MB for 60,000 samples); per step the
  scores cost ``B x num_samples x feat_dim`` multiply-adds per side.
* the value depends on the batch (negatives, memory updates), so it is not batch-size invariant.

Differences from the official code (``crd/criterion.py``, ``crd/memory.py`` in RepDistiller):

* negatives are drawn uniformly from all *other* training samples with torch's global RNG (which the
  trainer reseeds each step, so resume stays exact). ``ContrastMemory``'s own sampler is uniform too
  but may draw the positive itself; RepDistiller's CIFAR loader ("exact" mode) instead draws negatives
  from samples of *other classes*. A custom sampler can pass ``contrast_index`` (``B x (K+1)``,
  the positive first, RepDistiller's layout) to ``forward``.
* the memory banks are updated only in training mode, and under ``torch.distributed`` with the
  embeddings of the whole global batch (gathered from every rank), so all ranks keep the same banks.
* scores are computed in float32 (autocast is turned off inside), as ``exp(./0.07)`` needs.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.losses import LOSSES
from distill.losses._common import positive
from distill.losses.base import DistillLoss

EPS = 1e-7  # RepDistiller's ContrastLoss


class Embed(nn.Module):
    """Linear map to ``feat_dim`` followed by L2 normalisation; inputs are flattened to ``(B, D)``."""

    def __init__(self, in_features: int, feat_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.reshape(x.shape[0], -1)), dim=1)


def nce_scores(
    anchor: torch.Tensor, memory: torch.Tensor, contrast_index: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``exp(<anchor_b, memory[contrast_index[b, k]]> / T)``: ``(B, D), (M, D), (B, K+1) -> (B, K+1)``."""
    memory = memory.detach()
    batch, slots = contrast_index.shape
    # one (B, M) product beats gathering (B, K+1, D) rows
    if memory.shape[0] <= slots * memory.shape[1]:
        # a copy: autograd keeps it for the backward pass, and the bank is updated in place before that
        dots = (anchor @ memory.clone().t()).gather(1, contrast_index)
    else:
        rows = memory.index_select(0, contrast_index.reshape(-1)).view(batch, slots, -1)
        dots = torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2)
    return torch.exp(dots / temperature)


def nce_loss(probs: torch.Tensor, num_samples: int) -> torch.Tensor:
    """NCE loss (the paper's Eq. 18) of normalised scores ``(B, 1 + K)``, the positive first; summed over
    the pairs of a sample, averaged over samples."""
    k = probs.shape[1] - 1
    noise = k / float(num_samples)  # K * P_n with a uniform noise distribution P_n = 1 / M
    log_d1 = torch.log(probs[:, 0] / (probs[:, 0] + noise + EPS))
    log_d0 = torch.log(noise / (probs[:, 1:] + noise + EPS))
    return -(log_d1.sum() + log_d0.sum()) / probs.shape[0]


@torch.no_grad()
def momentum_update(
    memory: torch.Tensor, index: torch.Tensor, embeddings: torch.Tensor, momentum: float
) -> None:
    """``memory[i] <- normalise(momentum * memory[i] + (1 - momentum) * e_i)`` in place."""
    rows = memory.index_select(0, index) * momentum + embeddings.detach().float() * (1 - momentum)
    memory.index_copy_(0, index, F.normalize(rows, dim=1))


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank (``x`` itself outside ``torch.distributed``)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@LOSSES.register(
    "crd",
    paper="Tian et al., Contrastive Representation Distillation",
    year=2020,
    kind="contrastive",
    consumes="penultimate features + sample indices (memory banks of the training set)",
    inputs="vectors",
    identity=None,
    batch_invariant=False,
    taps="pooled penultimate features of both models (pool for the zoo CNN); maps are flattened",
    weight="0.8 (RepDistiller, mdistiller); CRD+KD adds kd with weight 1",
)
class CRDLoss(DistillLoss):
    """Contrastive representation distillation on ``(B, D_s)`` / ``(B, D_t)`` features (maps are
    flattened). Call :meth:`build` (the distiller does) before the first forward."""

    extra_inputs = ("index",)
    needs_same_shape = False

    def __init__(
        self,
        feat_dim: int = 128,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
    ) -> None:
        super().__init__()
        if not (isinstance(feat_dim, int) and feat_dim >= 1):
            raise ValueError(
                f"crd: feat_dim must be an int >= 1, got {feat_dim!r}; the paper uses 128"
            )
        if not (isinstance(num_negatives, int) and num_negatives >= 1):
            raise ValueError(
                f"crd: num_negatives must be an int >= 1, got {num_negatives!r}; the paper uses 16384"
            )
        positive("crd", "temperature", temperature, "the paper uses 0.07")
        if not 0 <= momentum < 1:
            raise ValueError(f"crd: momentum must be in [0, 1), got {momentum}; the paper uses 0.5")
        self.feat_dim = feat_dim
        self.num_negatives = num_negatives
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.num_samples = 0
        self.embed_student: Embed | None = None
        self.embed_teacher: Embed | None = None
        # the normalisation constants Z of each side, estimated on the first batch (-1: not yet)
        self.register_buffer("z_student", torch.tensor(-1.0))
        self.register_buffer("z_teacher", torch.tensor(-1.0))

    def build(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        num_samples: int | None = None,
        **_: object,
    ) -> None:
        """Create the embedding heads from the example feature sizes and the two memory banks."""
        if not (isinstance(num_samples, int) and num_samples >= 2):
            raise DistillError(
                f"crd needs num_samples (the training-set size, >= 2) to size its memory banks, got "
                f"{num_samples!r}; call distiller.setup(batch, num_samples=len(train_data))"
            )
        self.num_samples = num_samples
        self.embed_student = Embed(student[0].numel(), self.feat_dim)
        self.embed_teacher = Embed(teacher[0].numel(), self.feat_dim)
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)  # RepDistiller's initialisation
        for name in ("memory_student", "memory_teacher"):
            bank = torch.rand(num_samples, self.feat_dim).mul_(2 * stdv).add_(-stdv)
            self.register_buffer(name, bank)

    @property
    def negatives(self) -> int:
        """K: ``num_negatives`` clamped to the other samples available."""
        return min(self.num_negatives, self.num_samples - 1)

    def sample_contrast_index(self, index: torch.Tensor) -> torch.Tensor:
        """``(B, 1 + K)``: the positive, then ``K`` uniform draws among the other samples (global RNG)."""
        draws = torch.randint(
            0, self.num_samples - 1, (index.shape[0], self.negatives), device=index.device
        )
        draws += (draws >= index.unsqueeze(1)).long()  # skip the positive itself
        return torch.cat([index.unsqueeze(1), draws], dim=1)

    def _check_index(self, index: torch.Tensor) -> torch.Tensor:
        if self.embed_student is None:
            raise DistillError(
                "crd has no memory banks yet; call build() first (distiller.setup(batch, num_samples=N))"
            )
        index = index.reshape(-1).long()
        bad = (index < 0) | (index >= self.num_samples)
        if bool(bad.any()):
            raise DistillError(
                f"crd: sample index {int(index[bad][0])} is out of range for memory banks of "
                f"{self.num_samples} samples; num_samples must be the size of the training set the indices come from"
            )
        return index

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        index: torch.Tensor,
        contrast_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        index = self._check_index(index.to(student.device))
        if contrast_index is None:
            contrast_index = self.sample_contrast_index(index)
        with torch.autocast(student.device.type, enabled=False):
            s = self.embed_student(student.float())
            t = self.embed_teacher(teacher.detach().float())
            p_s = nce_scores(s, self.memory_teacher, contrast_index, self.temperature)
            p_t = nce_scores(t, self.memory_student, contrast_index, self.temperature)
            for z, p in ((self.z_student, p_s), (self.z_teacher, p_t)):
                if z < 0:  # first batch: Z = M * E[exp(score / T)], then fixed
                    z.fill_(float(_mean_over_ranks(p.detach().mean())) * self.num_samples)
            loss = nce_loss(p_s / self.z_student, self.num_samples) + nce_loss(
                p_t / self.z_teacher, self.num_samples
            )
        if self.training:
            all_index = _gather(index)
            momentum_update(self.memory_student, all_index, _gather(s.detach()), self.momentum)
            momentum_update(self.memory_teacher, all_index, _gather(t.detach()), self.momentum)
        return loss

    def extra_repr(self) -> str:
        return (
            f"feat_dim={self.feat_dim}, num_negatives={self.num_negatives}, "
            f"temperature={self.temperature}, momentum={self.momentum}, num_samples={self.num_samples}"
        )


def _mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()
