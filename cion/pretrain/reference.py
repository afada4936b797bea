"""Slow, literal transcriptions of the pre-training loss (paper Sec. 3.3, Eq. 8-9), float64 loops.

This is the specification in executable form, like :mod:`cion.denoise.reference` for Eq. 1-7:
the vectorised loss (:func:`cion.pretrain.loss.identity_dino_loss_sum`,
:class:`cion.pretrain.loss.IdentityDINOLoss`) must give the same value and gradient on every
input. Kept readable rather than fast (O(B^2 V^2 D) Python loops): tests only, a few dozen images.

Notation (paper Eq. 8-9): B images with identity labels ``y`` (B,), V augmented views of each
(the 2 global views first, then the local ones), output dimension D (the paper's K).
"""
from __future__ import annotations

import itertools

import torch


def softmax_slow(logits: torch.Tensor, temp: float) -> torch.Tensor:
    """Eq. 8 for one output vector: ``P(x)^(i) = exp(f(x)^(i) / tau) / sum_k exp(f(x)^(k) / tau)``.

    ``logits`` (..., D); returns probabilities (..., D) in float64.
    """
    z = logits.double() / temp
    z = z - z.max(dim=-1, keepdim=True).values      # same value, no overflow
    e = torch.exp(z)
    return e / e.sum(dim=-1, keepdim=True)


def identity_loss_slow(student_logp: torch.Tensor, teacher_p: torch.Tensor,
                       labels: torch.Tensor) -> torch.Tensor:
    """Eq. 9 by loops, normalised as the module does: the mean over teacher global views x of
    image i of the mean of ``H(P_T(x), P_S(x'))`` over every view x' of every image j with the
    same identity (``labels[j] == labels[i]``, i itself included), x' != x.

    Args:
        student_logp: (V, B, D) student log-probabilities ``log P_S`` (Eq. 8 with tau_s).
        teacher_p: (G, B, D) teacher probabilities ``P_T`` of the G global views (view g of the
            teacher is view g of the student).
        labels: (B,) identity labels.
    Returns:
        scalar tensor: the loss.
    """
    n_views, batch, _ = student_logp.shape
    n_teacher = teacher_p.shape[0]
    per_view = []
    for i, g in itertools.product(range(batch), range(n_teacher)):
        terms = []
        for j, v in itertools.product(range(batch), range(n_views)):
            if labels[j] != labels[i] or (j == i and v == g):
                continue                                     # other identity, or x' == x
            terms.append(-(teacher_p[g, i] * student_logp[v, j]).sum())   # H(a, b) = -a log b
        per_view.append(torch.stack(terms).mean())
    return torch.stack(per_view).mean()


def dino_loss_slow(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor,
                   n_crops: int, student_temp: float, teacher_temp: float) -> torch.Tensor:
    """DINO's loss (Caron et al. 2021, ``DINOLoss.forward``) written out: views chunked, every
    (teacher view iq, student view v) pair with v != iq, each image its own identity.

    ``student_out`` (n_crops * B, D) and ``teacher_out`` (2 * B, D) are logits, view-major.
    """
    student = (student_out.double() / student_temp).chunk(n_crops)
    teacher = torch.softmax((teacher_out.double() - center) / teacher_temp, dim=-1).chunk(2)
    total, n_terms = 0.0, 0
    for iq, q in enumerate(teacher):
        for v in range(len(student)):
            if v == iq:
                continue
            total = total + torch.sum(-q * torch.log_softmax(student[v], dim=-1), dim=-1).mean()
            n_terms += 1
    return total / n_terms


def sinkhorn_knopp_slow(logits: torch.Tensor, temp: float, iters: int = 3) -> torch.Tensor:
    """SwAV / DINOv2 Sinkhorn-Knopp centring with explicit (D, N) matrices, float64: the
    teacher probabilities that ``centering='sinkhorn'`` uses instead of mean-centring.

    ``logits`` (N, D); returns (N, D) probabilities, each row summing to 1.
    """
    q = torch.exp(logits.double() / temp).T
    q = q / q.sum()
    d, n = q.shape
    for _ in range(iters):
        q = q / q.sum(1, keepdim=True) / d
        q = q / q.sum(0, keepdim=True) / n
    return (q * n).T
