"""Losses of the supervised BNNeck baseline (paper Sec. 4.1; docs/finetuning.md): batch-hard triplet and
label-smoothed cross-entropy.

The triplet loss works on the features *before* the BN neck, the cross-entropy on the logits of
the classifier *after* it (the BNNeck design of the strong ReID baseline / TransReID).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cion.errors import CionError

#: squared distances are clamped to this before the square root, so the gradient of the distance
#: between identical features (the diagonal, duplicated images) is 0 instead of inf / nan
_SQ_EPS = 1e-12


def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    """(B, B) Euclidean distances between the rows of ``features`` (B, D).

    ``|a|^2 + |b|^2 - 2 a.b`` clamped at 1e-12 before the square root (finite gradients; the
    distance of a row to itself is 1e-6, not 0).
    """
    sq = (features * features).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (features @ features.T)
    return d2.clamp_min(_SQ_EPS).sqrt()


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3,
                       soft: bool = False) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017), a scalar.

    For every anchor i: ``d_ap`` = distance to its farthest positive (same label, j != i),
    ``d_an`` = distance to its closest negative (other label); the loss of the anchor is
    ``relu(d_ap - d_an + margin)``, or ``softplus(d_ap - d_an)`` when ``soft`` (the soft-margin
    variant; ``margin`` is then unused). The result is the mean over anchors that have at least
    one positive and one negative; a batch without any such anchor gives a zero that still has a
    gradient (``features.sum() * 0``).

    Args:
        features: (B, D) float embeddings (not normalised: Euclidean distances of raw features).
        labels: (B,) integer identity labels.
        margin: hinge margin (in feature-distance units), ignored when ``soft``.
        soft: soft-margin formulation.
    """
    if features.ndim != 2 or labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise CionError(f"batch_hard_triplet: expected features (B, D) and labels (B,), got "
                        f"{tuple(features.shape)} and {tuple(labels.shape)}")
    dist = pairwise_euclidean(features)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos, neg = same & ~eye, ~same
    valid = pos.any(1) & neg.any(1)
    if not bool(valid.any()):
        return features.sum() * 0.0
    d_ap = dist.masked_fill(~pos, float("-inf")).amax(1)[valid]
    d_an = dist.masked_fill(~neg, float("inf")).amin(1)[valid]
    gap = d_ap - d_an
    per_anchor = F.softplus(gap) if soft else F.relu(gap + margin)
    return per_anchor.mean()


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           epsilon: float = 0.1) -> torch.Tensor:
    """Cross-entropy with label smoothing ``epsilon`` (target ``1 - eps + eps / C`` on the true
    class, ``eps / C`` elsewhere), mean over the batch. ``logits`` (B, C), ``labels`` (B,) in
    0..C-1."""
    if not 0.0 <= epsilon < 1.0:
        raise CionError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
    return F.cross_entropy(logits, labels, label_smoothing=float(epsilon))
