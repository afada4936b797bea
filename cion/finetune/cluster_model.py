"""The Cluster Contrast network (paper Sec. 4.2, Table 2: USL / UDA): backbone -> GeM pooling (learnable
exponent, initial 3) -> BatchNorm1d with a frozen zero bias -> L2 normalisation, in training and
in evaluation alike.

CNN backbones that expose ``forward_features`` returning a (B, C, h, w) map (the zoo's ResNets,
already at last stride 1, and ``resnet_micro``) are pooled by GeM; other backbones (ViTs) keep
their own pooled (B, D) output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cion.finetune.pooling import GeM


def _feature_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    fn = getattr(backbone, "forward_features", None)
    if fn is None:
        return None
    out = fn(x)
    return out if torch.is_tensor(out) and out.ndim == 4 else None


class ClusterModel(nn.Module):
    """(B, 3, H, W) -> (B, D) L2-normalised features.

    Args:
        backbone: a cion backbone with ``feature_dim`` (D).
        img_size: (H, W) of the inputs (to probe whether the backbone gives a feature map).
    """

    def __init__(self, backbone: nn.Module, img_size: tuple[int, int] = (256, 128)):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = int(backbone.feature_dim)
        with torch.no_grad():
            was = backbone.training
            backbone.eval()
            try:
                probe = _feature_map(backbone, torch.zeros(1, 3, *img_size))
            except (RuntimeError, ValueError, AssertionError):
                probe = None
            backbone.train(was)
        self.pool = GeM() if probe is not None and probe.shape[1] == self.feature_dim else None
        self.neck = nn.BatchNorm1d(self.feature_dim)
        nn.init.ones_(self.neck.weight)
        nn.init.zeros_(self.neck.bias)
        self.neck.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            f = self.pool(_feature_map(self.backbone, x))
        else:
            f = self.backbone(x)
        return F.normalize(self.neck(f), dim=1)
