"""Generalised-mean (GeM) pooling, the pooling of MGN's heads and of the Cluster Contrast model."""
from __future__ import annotations

import torch
from torch import nn


class GeM(nn.Module):
    """Generalised-mean pooling ``mean(x.clamp(eps) ** p) ** (1 / p)`` over (h, w) with a
    learnable ``p`` (initial 3, used clamped at >= 1: between average (1) and max pooling):
    (B, C, h, w) -> (B, C). Computed in float32, returned in the input's dtype."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return x.float().clamp(min=self.eps).pow(p).mean((2, 3)).pow(1.0 / p).to(x.dtype)
