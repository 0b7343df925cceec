"""Logit standardization, the z-score pre-process of Sun et al., "Logit Standardization in Knowledge
Distillation", CVPR 2024 (shared by ``kd``, ``dkd`` and ``dist``; not a registered loss).

Each logit vector is centred and divided by its own standard deviation before the softmax:

    Z(z) = (z - mean(z)) / (std(z) + eps)

so teacher and student are compared on the *relations* between their logits, not on their range. The
softmax temperature then acts on a unit-variance vector (the paper's "base temperature"). This follows
the authors' code (github.com/sunshangquan/logit-standardization-KD, ``normalize`` in
``mdistiller/distillers/KD.py``): the standard deviation is the unbiased one (``torch.std``) and
``eps = 1e-7`` is added to it, not to the variance.
"""

from __future__ import annotations

import torch


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score of each logit vector along the last (class) dimension, in float32."""
    z = logits.float()
    mean = z.mean(dim=-1, keepdim=True)
    std = z.std(dim=-1, keepdim=True)
    return (z - mean) / (std + eps)
