"""Identity-guided self-distillation loss (CION Eq. 8-9, paper Sec. 3.3), vectorised over
identity groups; :mod:`cion.pretrain.reference` holds the literal loops it is tested against.

Notation for one (local) batch of B images, each with V views (``n_global`` = 2 global views
first, then L local views; V = 2 + L), and identity labels ``y`` (B,):

* teacher probabilities ``P_T(x_b^g) = softmax((t_b^g - c) / tau_t)`` for the global views
  g in {0, 1} only (``c`` the centre, ``tau_t`` the teacher temperature);
* student log-probabilities ``log P_S(x_b^v) = log_softmax(s_b^v / tau_s)`` for all V views.

**Pairs counted.** For every teacher view ``(b, g)`` the *partners* are every student view
``(b', v)`` of every image ``b'`` in the batch with the same identity (``y_b' == y_b``, the
image itself included), except the identical view ``(b', v) == (b, g)``. That is Eq. 9 as
written: all images of the identity times all their views, minus ``x' == x`` only. (The authors'
code skipped same-slot pairs across images; we do not.) Identity is decided by the label, so a
batch may hold groups of any size (the last group of a batch may be cut short, an identity may
appear in two sampler blocks: both simply form one group).

**Weights.** Each teacher view carries the same weight; its term is the *mean* cross-entropy
over its ``n_b = V * |group(b)| - 1`` partners. The loss is the mean over all ``G * B`` teacher
views (over all ranks under DDP)::

    loss = 1 / (G * B_total) * sum_{b, g} 1 / n_b * sum_{(b', v) partner of (b, g)} H(P_T(x_b^g), P_S(x_b'^v))

With one image per identity (K = 1) ``n_b = V - 1`` and this is exactly DINO's loss
(mean over the batch of the average over the 2 (V - 1) (teacher, student) pairs).

**Vectorisation.** Because ``H(t, s) = -<t, log s>`` is linear in both arguments, the sum over
partners of one group is ``-<sum of teacher probs of the group, sum of student log-probs of
the group>`` minus the excluded identical pairs ``-<P_T(x_b^g), log P_S(x_b^g)>``: one
segment sum (index_add) per side and one row-wise dot product over groups, O(B V D) work, no
loop over pairs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _to_device_async(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host-to-GPU copy that does not block the host (pinned first: truly asynchronous)."""
    if device.type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def group_index(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map identity labels (B,) to dense group ids (B,) in [0, n_groups) and group sizes."""
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return inverse, counts


def identity_dino_loss_sum(student_logp: torch.Tensor, teacher_p: torch.Tensor,
                           labels: torch.Tensor) -> torch.Tensor:
    """Sum over teacher views of their mean partner cross-entropy (see module docstring).

    Args:
        student_logp: (V, B, D) student log-probabilities, views in order (globals first).
        teacher_p: (G, B, D) teacher probabilities of the G global views (G <= V; teacher
            view g is the same crop as student view g).
        labels: (B,) identity labels (any integers), best on the CPU (grouping them is a
            host-side ``torch.unique``; on an accelerator it would wait for the device).

    Returns:
        scalar: ``sum_{b, g} (1 / n_b) sum_partners H``; divide by ``G * B`` for the mean.
    """
    n_views, batch, dim = student_logp.shape
    n_teacher = teacher_p.shape[0]
    group, sizes = group_index(labels)     # labels on the CPU: no device sync for torch.unique
    group = _to_device_async(group, student_logp.device)
    sizes = _to_device_async(sizes, student_logp.device)
    n_groups = sizes.numel()
    partners = (n_views * sizes - 1).to(student_logp.dtype)                     # (n_groups,)
    s_group = student_logp.new_zeros(n_groups, dim).index_add_(0, group, student_logp.sum(0))
    t_group = teacher_p.new_zeros(n_groups, dim).index_add_(0, group, teacher_p.sum(0))
    all_pairs = -(t_group * s_group).sum(1) / partners                          # (n_groups,)
    same_view = -(teacher_p * student_logp[:n_teacher]).sum(2)                  # (G, B)
    return all_pairs.sum() - (same_view / partners[group]).sum()


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, teacher_temp: float, iters: int = 3) -> torch.Tensor:
    """Teacher probabilities by Sinkhorn-Knopp normalisation (DINOv2's centring), DDP-aware.

    ``exp(logits / tau_t)`` of the global batch is rescaled alternately so that every output
    dimension receives the same total mass (rows) and every sample is a distribution
    (columns). Unlike mean-centring it cannot drift to the uniform distribution: a batch is
    always spread over the prototypes, so a randomly initialised network gets sharp, balanced
    targets from its first step.

    Args:
        teacher_logits: (N, D) teacher logits on this rank (all ranks together form the batch).
        teacher_temp: tau_t.
    Returns:
        (N, D) probabilities, rows summing to 1.
    """
    from cion import distributed as dist

    logits = teacher_logits.float() / teacher_temp
    shift = dist.all_reduce_max(logits.max().reshape(1))
    q = torch.exp(logits - shift).T                                   # (D, N)
    n_total = dist.all_reduce_sum(torch.full((1,), float(q.shape[1]), device=q.device))
    q /= dist.all_reduce_sum(q.sum().reshape(1))
    dim = q.shape[0]
    for _ in range(iters):
        q /= dist.all_reduce_sum(q.sum(dim=1, keepdim=True)).clamp_min(1e-30)
        q /= dim
        q /= q.sum(dim=0, keepdim=True).clamp_min(1e-30)
        q /= n_total
    return (q * n_total).T


class IdentityDINOLoss(nn.Module):
    """CION's loss with DINO's centring and sharpening.

    ``forward(student_out, teacher_out, labels, teacher_temp)``:

    * student_out: (V * B, D) student logits, view-major (rows ``v*B:(v+1)*B`` = view v);
    * teacher_out: (G * B, D) teacher logits of the G global views, same layout;
    * labels: (B,) identity labels.

    Returns ``(loss, stats)``: ``loss`` is the value to back-propagate (already scaled so
    that DDP's gradient averaging gives the gradient of the global mean), ``stats`` holds the
    global mean loss and collapse statistics as 0-d tensors (teacher entropy, entropy of the
    batch-mean teacher distribution, KL(teacher || student) = loss - teacher entropy).
    The centre (an EMA of the teacher logits' batch mean, all-reduced) is updated in place.

    ``centering``: ``"mean"`` (DINO, CION: subtract the centre, then sharpen) or
    ``"sinkhorn"`` (DINOv2: :func:`sinkhorn_knopp`; the centre is then still tracked for the
    collapse statistics but not used).
    """

    def __init__(self, out_dim: int, n_global: int = 2, student_temp: float = 0.1,
                 center_momentum: float = 0.9, centering: str = "mean"):
        super().__init__()
        if centering not in ("mean", "sinkhorn"):
            raise ValueError(f"centering must be 'mean' or 'sinkhorn' (got {centering!r})")
        self.n_global = n_global
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor,
                labels: torch.Tensor, teacher_temp: float):
        from cion import distributed as dist

        batch = labels.numel()
        # Eq. 8: P_S = softmax(f_S / tau_s) (as log-probabilities); P_T likewise with tau_t,
        # after DINO's centring (or Sinkhorn-Knopp)
        student_logp = F.log_softmax(student_out.float() / self.student_temp, dim=-1)
        student_logp = student_logp.view(-1, batch, student_logp.shape[-1])
        teacher_logits = teacher_out.detach().float()
        if self.centering == "sinkhorn":
            teacher_p = sinkhorn_knopp(teacher_logits, teacher_temp)
        else:
            teacher_p = F.softmax((teacher_logits - self.center) / teacher_temp, dim=-1)
        teacher_p = teacher_p.view(self.n_global, batch, -1)

        local_sum = identity_dino_loss_sum(student_logp, teacher_p, labels)
        with torch.no_grad():
            ent = -(teacher_p * torch.log(teacher_p.clamp_min(1e-30))).sum(-1).sum()
            n_local = torch.full((), float(teacher_p.shape[0] * batch), device=local_sum.device)
            counts = torch.stack([n_local, local_sum.detach(), ent])   # stays on the device
            counts = dist.all_reduce_sum(counts)
        n_total = counts[0]
        # DDP averages gradients over ranks: multiply by the world size so the averaged
        # gradient is that of the global mean.
        loss = local_sum * (dist.world_size() / n_total)
        with torch.no_grad():
            mean_p = teacher_p.mean(dim=(0, 1))
            batch_entropy = -(mean_p * torch.log(mean_p.clamp_min(1e-30))).sum()
            global_loss = counts[1] / n_total
            teacher_entropy = counts[2] / n_total
            stats = {"loss": global_loss, "teacher_entropy": teacher_entropy,
                     "batch_entropy": batch_entropy, "kl": global_loss - teacher_entropy}
        self.update_center(teacher_logits)
        return loss, stats

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """EMA of the teacher logits' mean over the global batch (all ranks)."""
        from cion import distributed as dist

        summed = torch.cat([teacher_logits.sum(0), teacher_logits.new_tensor([teacher_logits.shape[0]])])
        summed = dist.all_reduce_sum(summed)
        batch_center = (summed[:-1] / summed[-1]).unsqueeze(0)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
