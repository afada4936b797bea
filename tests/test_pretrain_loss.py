"""The identity-guided loss (Eq. 9) against DINO's loss and a slow transcription of Eq. 9."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from cion.pretrain.loss import IdentityDINOLoss, identity_dino_loss_sum


def dino_loss_reference(student_out, teacher_out, center, n_crops, student_temp, teacher_temp):
    """DINO's DINOLoss.forward (main_dino.py), written out: views chunked, pairs iq != v."""
    student_out = (student_out / student_temp).chunk(n_crops)
    teacher_out = F.softmax((teacher_out - center) / teacher_temp, dim=-1).chunk(2)
    total, n_terms = 0.0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
            total = total + loss.mean()
            n_terms += 1
    return total / n_terms


def eq9_slow(student_logp, teacher_p, labels):
    """Eq. 9 by loops: for each teacher global view x of image i, the mean of H(P_T(x), P_S(x'))
    over all views x' of all images j with the same identity, x' != x; mean over teacher views."""
    V, B, _ = student_logp.shape
    G = teacher_p.shape[0]
    per_view = []
    for i, g in itertools.product(range(B), range(G)):
        terms = []
        for j, v in itertools.product(range(B), range(V)):
            if labels[j] != labels[i] or (j == i and v == g):
                continue
            terms.append(-(teacher_p[g, i] * student_logp[v, j]).sum())
        per_view.append(torch.stack(terms).mean())
    return torch.stack(per_view).mean()


def _random_outputs(V, B, D, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(V * B, D, generator=g, dtype=dtype) * 3
    teacher = torch.randn(2 * B, D, generator=g, dtype=dtype) * 3
    return student, teacher


def test_k1_equals_dino_loss():
    V, B, D = 6, 5, 32
    student, teacher = _random_outputs(V, B, D, 0)
    loss_fn = IdentityDINOLoss(D, student_temp=0.1, center_momentum=0.9).double()
    loss_fn.center.copy_(torch.randn(1, D, dtype=torch.float64))
    center = loss_fn.center.clone()
    ref = dino_loss_reference(student, teacher, center, V, 0.1, 0.04)
    labels = torch.arange(B)  # K = 1: every image its own identity
    # the module computes in float32; compare the float64 core exactly and the module closely
    logp = F.log_softmax(student / 0.1, -1).view(V, B, D)
    tp = F.softmax((teacher - center) / 0.04, -1).view(2, B, D)
    exact = identity_dino_loss_sum(logp, tp, labels) / (2 * B)
    assert torch.allclose(exact, ref, rtol=1e-12, atol=1e-12)
    loss, stats = loss_fn(student, teacher, labels, 0.04)
    assert torch.allclose(loss.double(), ref, rtol=1e-5)
    assert torch.allclose(stats["loss"].double(), ref, rtol=1e-5)
    # centre moved towards the batch mean of the teacher logits
    expected = center * 0.9 + teacher.float().mean(0, keepdim=True).double() * 0.1
    assert torch.allclose(loss_fn.center.double(), expected, atol=1e-5)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_matches_slow_eq9(k):
    V, P, D = 4, 3, 16
    B = P * k
    student, teacher = _random_outputs(V, B, D, k)
    logp = F.log_softmax(student / 0.1, -1).view(V, B, D)
    tp = F.softmax(teacher / 0.05, -1).view(2, B, D)
    labels = torch.arange(P).repeat_interleave(k) * 7 + 3       # blocks [id0 x k, id1 x k, ...]
    fast = identity_dino_loss_sum(logp, tp, labels) / (2 * B)
    slow = eq9_slow(logp, tp, labels)
    assert torch.allclose(fast, slow, rtol=1e-12)
    # order of images in the batch does not matter, only the labels
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(1))
    fast_perm = identity_dino_loss_sum(logp[:, perm], tp[:, perm], labels[perm]) / (2 * B)
    assert torch.allclose(fast, fast_perm, rtol=1e-12)
    # and it differs from DINO's per-image loss (cross-image pairs do count)
    dino = identity_dino_loss_sum(logp, tp, torch.arange(B)) / (2 * B)
    assert not torch.allclose(fast, dino, rtol=1e-3)


def test_uneven_groups_and_gradient():
    """Groups of different sizes (a cut-off block, a repeated identity) and the gradient."""
    V, D = 5, 12
    labels = torch.tensor([4, 4, 4, 9, 2, 2, 9, 1])
    B = labels.numel()
    student, teacher = _random_outputs(V, B, D, 5)
    student.requires_grad_(True)
    tp = F.softmax(teacher / 0.04, -1).view(2, B, D)
    fast = identity_dino_loss_sum(F.log_softmax(student / 0.1, -1).view(V, B, D), tp, labels) / (2 * B)
    (g_fast,) = torch.autograd.grad(fast, student)
    slow = eq9_slow(F.log_softmax(student / 0.1, -1).view(V, B, D), tp, labels)
    (g_slow,) = torch.autograd.grad(slow, student)
    assert torch.allclose(fast, slow, rtol=1e-12)
    assert torch.allclose(g_fast, g_slow, rtol=1e-10, atol=1e-14)


def test_collapse_statistics():
    D, B, V = 64, 4, 3
    loss_fn = IdentityDINOLoss(D)
    labels = torch.tensor([0, 0, 1, 1])
    # a constant teacher output gives a uniform teacher distribution: entropy log D
    _, stats = loss_fn(torch.zeros(V * B, D), torch.zeros(2 * B, D), labels, 0.04)
    assert stats["teacher_entropy"].item() == pytest.approx(torch.log(torch.tensor(float(D))).item(), rel=1e-5)
    assert stats["kl"].item() == pytest.approx(0.0, abs=1e-4)


def sinkhorn_slow(logits, temp, iters=3):
    """SwAV / DINOv2 Sinkhorn-Knopp written with explicit (D, N) matrices, float64."""
    q = torch.exp(logits.double() / temp).T
    q = q / q.sum()
    d, n = q.shape
    for _ in range(iters):
        q = q / q.sum(1, keepdim=True) / d
        q = q / q.sum(0, keepdim=True) / n
    return (q * n).T


def test_sinkhorn_centering_matches_reference_and_is_balanced():
    from cion.pretrain.loss import sinkhorn_knopp

    torch.manual_seed(0)
    logits = torch.randn(48, 16) * 0.3 + torch.randn(1, 16)   # a strong shared component
    p = sinkhorn_knopp(logits, 0.1)
    torch.testing.assert_close(p.double(), sinkhorn_slow(logits, 0.1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(p.sum(1), torch.ones(48))      # every sample a distribution
    # prototypes share the batch far more evenly than a plain softmax would
    plain = torch.softmax(logits / 0.1, 1).sum(0)
    assert p.sum(0).std() < 0.5 * plain.std()
    # a constant added to the logits changes nothing (stable shift)
    torch.testing.assert_close(sinkhorn_knopp(logits + 50.0, 0.1), p)


def test_loss_with_sinkhorn_centering_runs_and_leaves_centre_tracking():
    torch.manual_seed(1)
    B, V, D = 6, 4, 32
    loss_fn = IdentityDINOLoss(D, centering="sinkhorn")
    s = torch.randn(V * B, D, requires_grad=True)
    t = torch.randn(2 * B, D)
    loss, stats = loss_fn(s, t, torch.tensor([0, 0, 1, 1, 2, 2]), 0.05)
    loss.backward()
    assert torch.isfinite(loss) and s.grad.abs().sum() > 0
    assert loss_fn.center.abs().sum() > 0      # still tracked for the statistics
    with pytest.raises(ValueError, match="centering"):
        IdentityDINOLoss(D, centering="median")
