"""Liu et al., "Knowledge Distillation via Instance Relationship Graph", CVPR 2019 (IRG).

The knowledge of a layer is an *instance relationship graph*: its vertices are the samples' features,
its edges the squared Euclidean distances between every pair of samples in the batch. The student
matches the teacher's graphs, and how the graph changes from one layer to the next:

    vertex     L_V = mean (z_s - z_t)^2                         on the last tap (the logits)
    edge       L_E = mean over taps l of  mean (A_s^l - A_t^l)^2,  A_ij = ||f_i - f_j||^2 / max A
    transform  L_T = mean over consecutive map pairs (l, l+1) of  mean (T_s - T_t)^2,
               T_i = ||f_i^l - f_i^{l+1}||^2 / max_i T_i
    L = w_V L_V + w_E L_E + w_T L_T

For the transformation the earlier map is average-pooled to the later one's size and the later map's
channels are averaged in groups of ``C_{l+1} / C_l`` adjacent channels, so both live in one space.
Each distance matrix is divided by its largest entry, so edges and transformations ignore the feature
scale; they are also unchanged by translating or rotating a feature space.

Taps: a list ending with ``@logits`` (the vertices); the taps before it give the edges and, where two
consecutive ones are feature maps (B, C, H, W), the transformation. A single tap gives vertex and edge
on it. Edges compare only (B, B) matrices, so widths may differ; the vertex tap must match.

The authors' code is Caffe (yufanLIU/IRG). This follows the PyTorch port in Knowledge-Distillation-Zoo
(AberHu, ``kd_losses/irg.py``, "one-to-one mode") exactly, generalising its channel-pair averaging
(``C_{l+1} = 2 C_l``) to any integer ratio; its CIFAR settings are the defaults: w_V = 0.1,
w_E = 5, w_T = 5, taps ``[stage 2, stage 3, pooled features, logits]``, weight 1 next to
cross-entropy (no KD term). The paper's other graph-matching modes (one layer to several) are not
implemented.

Practical notes: relates samples within a batch, so the value depends on the batch's composition; each
tap costs a (B, B) matrix. For the zoo's ``cnn``: ``[features.2, features.3, pool, "@logits"]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import LOSSES
from distill.losses.base import DistillLoss

EPS = 1e-12  # clamp of the squared distances, as in the reference


def edge_matrix(features: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``(B, ...) -> (B, B)`` squared pairwise distances, zero diagonal, divided by their maximum."""
    f = features.flatten(1)
    squared = f.pow(2).sum(1)
    d = (squared.unsqueeze(0) + squared.unsqueeze(1) - 2 * f @ f.t()).clamp(min=eps)
    d = d * (1 - torch.eye(len(f), dtype=d.dtype, device=d.device))
    return d / d.max()


def transformation(earlier: torch.Tensor, later: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``(B,)`` squared distance of each sample's features between two maps, divided by the maximum."""
    if earlier.ndim != 4 or later.ndim != 4:
        raise ValueError("irg: the transformation needs two feature maps (B, C, H, W)")
    (c1, h1, w1), (c2, h2, w2) = earlier.shape[1:], later.shape[1:]
    if h1 < h2 or w1 < w2 or c2 % c1:
        raise ValueError(
            f"irg: cannot relate maps {tuple(earlier.shape)} -> {tuple(later.shape)}; the later map "
            "needs a smaller or equal size and a multiple of the earlier one's channels "
            "(set transform_weight: 0 or pick consecutive stages)"
        )
    if (h1, w1) != (h2, w2):
        earlier = F.adaptive_avg_pool2d(earlier, (h2, w2))
    if c2 != c1:
        later = later.reshape(len(later), c1, c2 // c1, h2, w2).mean(2)
    d = (earlier.flatten(1) - later.flatten(1)).pow(2).sum(1).clamp(min=eps)
    return d / d.max()


def irg_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    vertex_weight: float = 0.1,
    edge_weight: float = 5.0,
    transform_weight: float = 5.0,
) -> torch.Tensor:
    """IRG over taps ``[..., vertices]``; teacher tensors detached, computed in float32."""
    if len(student) != len(teacher):
        raise ValueError(f"irg: {len(student)} student taps but {len(teacher)} teacher taps")
    s = [x.float() for x in student]
    t = [x.detach().float() for x in teacher]
    if s[-1].shape != t[-1].shape:
        raise ValueError(
            f"irg: the last tap gives the vertices and must match, got student {tuple(s[-1].shape)} "
            f"and teacher {tuple(t[-1].shape)}; put '@logits' last"
        )
    vertex = F.mse_loss(s[-1], t[-1])
    graph_s, graph_t = (s[:-1], t[:-1]) if len(s) > 1 else (s, t)
    edge = sum(
        F.mse_loss(edge_matrix(a), edge_matrix(b)) for a, b in zip(graph_s, graph_t, strict=True)
    ) / len(graph_s)
    pairs = [i for i in range(len(graph_s) - 1) if graph_s[i].ndim == graph_s[i + 1].ndim == 4]
    loss = vertex_weight * vertex + edge_weight * edge
    if transform_weight and pairs:
        transform = sum(
            F.mse_loss(
                transformation(graph_s[i], graph_s[i + 1]),
                transformation(graph_t[i], graph_t[i + 1]),
            )
            for i in pairs
        ) / len(pairs)
        loss = loss + transform_weight * transform
    return loss


@LOSSES.register(
    "irg",
    paper="Liu et al., Knowledge Distillation via Instance Relationship Graph, CVPR",
    year=2019,
    kind="relation",
    consumes="feature maps, embeddings and logits: pairwise distances, their change across layers",
    inputs="maps_list",
    identity="zero",
    batch_invariant=False,
    taps="[stage, next stage, pooled features, @logits], e.g. features.2, features.3, pool, @logits",
    weight="1 next to cross-entropy, without KD (inner weights 0.1 / 5 / 5, Knowledge-Distillation-Zoo)",
)
class IRGLoss(DistillLoss):
    """Instance relationship graphs over a list of taps ending with the logits."""

    needs_same_shape = False  # edges compare (B, B) matrices; only the vertex tap must match

    def __init__(
        self, vertex_weight: float = 0.1, edge_weight: float = 5.0, transform_weight: float = 5.0
    ) -> None:
        super().__init__()
        for name, value in (
            ("vertex_weight", vertex_weight),
            ("edge_weight", edge_weight),
            ("transform_weight", transform_weight),
        ):
            if not value >= 0:
                raise ValueError(f"irg: {name} must be >= 0, got {value}; the defaults are 0.1/5/5")
        self.vertex_weight = float(vertex_weight)
        self.edge_weight = float(edge_weight)
        self.transform_weight = float(transform_weight)

    @staticmethod
    def example_inputs(batch_size: int, generator: torch.Generator):
        """Two stages, pooled features and logits; the teacher wider at every tap but the logits."""

        def rand(*shape):
            return torch.randn(batch_size, *shape, generator=generator)

        student = [rand(4, 4, 4), rand(8, 2, 2), rand(16), rand(10)]
        teacher = [rand(8, 4, 4), rand(32, 2, 2), rand(32), 2 * rand(10)]
        return student, teacher

    def forward(
        self, student: torch.Tensor | list[torch.Tensor], teacher: torch.Tensor | list[torch.Tensor]
    ) -> torch.Tensor:
        student = student if isinstance(student, list | tuple) else [student]
        teacher = teacher if isinstance(teacher, list | tuple) else [teacher]
        with torch.autocast(student[0].device.type, enabled=False):
            return irg_loss(
                list(student),
                list(teacher),
                self.vertex_weight,
                self.edge_weight,
                self.transform_weight,
            )

    def extra_repr(self) -> str:
        return (
            f"vertex_weight={self.vertex_weight}, edge_weight={self.edge_weight}, "
            f"transform_weight={self.transform_weight}"
        )
