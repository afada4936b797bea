"""The identity-guided loss (Eq. 8-9) against DINO's loss and the slow transcription of Eq. 9
in :mod:`cion.pretrain.reference`."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cion.pretrain.loss import IdentityDINOLoss, identity_dino_loss_sum
from cion.pretrain.reference import (dino_loss_slow, identity_loss_slow, sinkhorn_knopp_slow,
                                     softmax_slow)


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
    ref = dino_loss_slow(student, teacher, center, V, 0.1, 0.04)
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
    slow = identity_loss_slow(logp, tp, labels)
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
    slow = identity_loss_slow(F.log_softmax(student / 0.1, -1).view(V, B, D), tp, labels)
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


def test_sinkhorn_centering_matches_reference_and_is_balanced():
    from cion.pretrain.loss import sinkhorn_knopp

    torch.manual_seed(0)
    logits = torch.randn(48, 16) * 0.3 + torch.randn(1, 16)   # a strong shared component
    p = sinkhorn_knopp(logits, 0.1)
    torch.testing.assert_close(p.double(), sinkhorn_knopp_slow(logits, 0.1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(p.sum(1), torch.ones(48))      # every sample a distribution
    # prototypes share the batch far more evenly than a plain softmax would
    plain = torch.softmax(logits / 0.1, 1).sum(0)
    assert p.sum(0).std() < 0.5 * plain.std()
    # a constant added to the logits changes nothing (stable shift)
    torch.testing.assert_close(sinkhorn_knopp(logits + 50.0, 0.1), p)


def test_module_matches_eq8_eq9_reference_and_sinkhorn_changes_the_targets():
    """The whole module (Eq. 8 softmaxes, Eq. 9 pairs) against the slow reference, with mean
    centring (zero centre) and with Sinkhorn-Knopp targets; the two centrings differ."""
    torch.manual_seed(1)
    B, V, D = 6, 4, 32
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    s = torch.randn(V * B, D, requires_grad=True)
    t = torch.randn(2 * B, D) * 0.3 + torch.randn(1, D)      # a shared component to remove
    logp = torch.log(softmax_slow(s, 0.1)).view(V, B, D)
    plain = identity_loss_slow(logp, softmax_slow(t, 0.1).view(2, B, D), labels)
    balanced = identity_loss_slow(logp, sinkhorn_knopp_slow(t, 0.1).view(2, B, D), labels)
    mean_fn, sk_fn = IdentityDINOLoss(D), IdentityDINOLoss(D, centering="sinkhorn")
    loss_mean, _ = mean_fn(s, t, labels, 0.1)
    loss_sk, stats = sk_fn(s, t, labels, 0.1)
    torch.testing.assert_close(loss_mean.double(), plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_sk.double(), balanced, rtol=1e-5, atol=1e-6)
    assert abs(loss_sk.item() - loss_mean.item()) > 0.05 * abs(loss_mean.item())
    (g_sk,) = torch.autograd.grad(loss_sk, s)
    (g_ref,) = torch.autograd.grad(balanced, s)
    torch.testing.assert_close(g_sk.double(), g_ref.double(), rtol=1e-4, atol=1e-7)
    assert sk_fn.center.abs().sum() > 0      # still tracked for the statistics
    with pytest.raises(ValueError, match="centering"):
        IdentityDINOLoss(D, centering="median")
