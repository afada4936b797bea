"""Collectives for losses and normalisation under torchrun / DDP, on any backend (gloo, nccl).

Single process: every function here is the identity. Under DDP:

* :func:`gather_rows_with_grad` concatenates every rank's (B, D) rows into (W * B, D) and keeps
  gradients flowing back to the rank that produced each row, so a loss over the *global* batch
  (batch-hard triplet mining over all identities of the step) has the gradients of the
  single-process loss after DDP averages them;
* :func:`all_gather_rows` is the same without gradients (memory updates, feature banks);
* :class:`GlobalBatchNorm` normalises with the statistics of the global batch (SyncBatchNorm),
  CPU included: PyTorch's ``nn.SyncBatchNorm`` only runs on GPUs, so on CPU (gloo) this one is
  used, on GPU PyTorch's (:func:`sync_batchnorm`).
"""
from __future__ import annotations

import torch
import torch.distributed as tdist
from torch import nn

from cion import distributed as dist


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is again a sum over ranks (the gradient of every rank's
    loss reaches every rank's input)."""

    @staticmethod
    def forward(ctx, x):
        out = x.clone(memory_format=torch.contiguous_format)
        tdist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        tdist.all_reduce(grad)
        return grad


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks, differentiable; ``x`` itself in one process."""
    if dist.world_size() == 1:
        return x
    return _AllReduceSum.apply(x)


def gather_rows_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each of W ranks -> (W * B, ...) in rank order, differentiable.

    Every rank must pass the same B. Each rank computes the same global loss from the result;
    DDP's gradient average then equals the single-process gradient (each row's gradient is the
    sum over ranks of the identical losses' gradients, divided by W by DDP).
    """
    w = dist.world_size()
    if w == 1:
        return x
    full = x.new_zeros((w * x.shape[0],) + tuple(x.shape[1:]))
    r = dist.rank()
    full = full.index_copy(0, torch.arange(r * x.shape[0], (r + 1) * x.shape[0],
                                           device=x.device), x)
    return all_reduce_sum_with_grad(full)


@torch.no_grad()
def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each rank -> (W * B, ...) in rank order, no gradient. Same B everywhere."""
    w = dist.world_size()
    if w == 1:
        return x
    out = [torch.empty_like(x) for _ in range(w)]
    tdist.all_gather(out, x.contiguous())
    return torch.cat(out)


@torch.no_grad()
def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks, so that an
    evaluation or a feature extraction in eval mode sees the same model on every rank."""
    if dist.world_size() == 1:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            tdist.all_reduce(buf)
            buf.div_(dist.world_size())


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all ranks (sum and sum of squares all-reduced in
    float64, gradients through them), for inputs (N, C, ...). Outside DDP training it is a plain
    BatchNorm. Running variance: unbiased over the global batch, as ``nn.BatchNorm``."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (N, C, ...) inputs, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        xd = x.double()
        count = x.numel() // c
        stats = torch.cat([xd.sum(dims), (xd * xd).sum(dims), xd.new_tensor([count])])
        stats = all_reduce_sum_with_grad(stats)
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c:2 * c] / total - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                n = float(total)
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(
                    (var * n / max(n - 1.0, 1.0)).to(self.running_var.dtype), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xd - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.double().view(shape) + self.bias.double().view(shape)
        return y.to(x.dtype)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
            out.weight.requires_grad_(module.weight.requires_grad)
            out.bias.requires_grad_(module.bias.requires_grad)
        if module.track_running_stats:
            out.running_mean.copy_(module.running_mean)
            out.running_var.copy_(module.running_var)
            out.num_batches_tracked.copy_(module.num_batches_tracked)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out


def sync_batchnorm(model: nn.Module, info: dist.DistInfo) -> tuple[nn.Module, bool]:
    """BatchNorm over the global batch when several processes train: PyTorch's SyncBatchNorm
    on GPU, :class:`GlobalBatchNorm` on CPU. Returns ``(model, converted)``; state-dict keys
    are unchanged either way."""
    if info.world_size == 1 or not dist.has_batchnorm(model):
        return model, False
    if info.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model), True
    return _convert(model), True
