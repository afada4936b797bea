"""DINO projection head and the multi-crop wrapper (backbone + head over views of several sizes)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation: ``W = g * V / ||V||_row``.

    With ``fix_norm=True`` (DINO's ``norm_last_layer``) ``g`` is frozen at 1, so every output
    unit is a unit-norm direction. ``g`` is stored 1-D (out_dim,), so it lands in the
    no-weight-decay parameter group when trainable.
    """

    def __init__(self, in_dim: int, out_dim: int, fix_norm: bool = True):
        super().__init__()
        self.v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.v, std=0.02)
        self.g = nn.Parameter(torch.ones(out_dim), requires_grad=not fix_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.v * (self.g / self.v.norm(dim=1).clamp_min(1e-12)).unsqueeze(1)
        return F.linear(x, w)


class DINOHead(nn.Module):
    """MLP ``in -> hidden -> hidden -> bottleneck`` (GELU), L2-normalise, weight-normed last
    layer ``bottleneck -> out_dim`` without bias. Maps (N, in_dim) to (N, out_dim) logits.

    ``use_bn`` (DINO's ``use_bn_in_head``) puts a BatchNorm1d after each hidden linear layer.
    It removes the component shared by all images of a batch, which a randomly initialised
    backbone has in abundance: small trainings from scratch leave DINO's uniform plateau much
    sooner with it.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, norm_last_layer: bool = True, use_bn: bool = False):
        super().__init__()

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Linear(i, o)] + ([nn.BatchNorm1d(o)] if use_bn else []) + [nn.GELU()]

        self.mlp = nn.Sequential(*block(in_dim, hidden_dim), *block(hidden_dim, hidden_dim),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_norm=norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


class MultiCropNet(nn.Module):
    """Backbone + head applied to a list of views.

    ``forward(views)`` takes a list of (B, 3, H_v, W_v) tensors (same B; consecutive views of
    equal size are batched into one backbone call) and returns (len(views) * B, out_dim)
    logits ordered view-major: rows ``v*B:(v+1)*B`` are view ``v`` of every image.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, channels_last: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.channels_last = channels_last

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        feats = []
        start = 0
        while start < len(views):  # loop over resolution groups (2 at most in practice)
            end = start + 1
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            x = torch.cat(views[start:end])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            feats.append(self.backbone(x))
            start = end
        return self.head(torch.cat(feats))
