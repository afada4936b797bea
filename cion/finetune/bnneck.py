"""The BNNeck model of the supervised baseline (paper Sec. 4.1; docs/finetuning.md): backbone -> feature f (B, D)
-> BatchNorm1d "neck" (bias frozen at 0) -> bias-free linear classifier (B, C).

Training returns ``(f, logits)``: the triplet loss uses ``f`` (before the neck), the ID loss the
logits (after it). Evaluation returns ``f`` only: the paper tests on the feature before the BN
neck, so ``BNNeckModel`` in eval mode is a drop-in backbone for
:func:`cion.evaluation.retrieval.zero_shot_map`.
"""
from __future__ import annotations

import torch
from torch import nn

from cion.errors import CionError


class BNNeckModel(nn.Module):
    """Backbone + BN neck + ID classifier.

    Args:
        backbone: any module mapping (B, 3, H, W) images to (B, D) features, with an attribute
            ``feature_dim`` (D), like :func:`cion.models.backbone.build_backbone`'s models.
        num_classes: C, the number of training identities.
    """

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        dim = getattr(backbone, "feature_dim", None)
        if not dim:
            raise CionError(f"BNNeckModel: the backbone ({type(backbone).__name__}) has no "
                            "'feature_dim' attribute. Fix: set backbone.feature_dim = D, its "
                            "output width")
        if num_classes < 2:
            raise CionError(f"BNNeckModel: num_classes must be >= 2, got {num_classes}")
        self.backbone = backbone
        self.feature_dim = int(dim)
        self.num_classes = int(num_classes)
        self.neck = nn.BatchNorm1d(self.feature_dim)
        nn.init.ones_(self.neck.weight)
        nn.init.zeros_(self.neck.bias)
        self.neck.bias.requires_grad_(False)          # BNNeck: no shift before the classifier
        self.classifier = nn.Linear(self.feature_dim, self.num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, x: torch.Tensor):
        """Training: ``(features (B, D), logits (B, C))``; eval: ``features (B, D)``, both the
        backbone output before the neck."""
        f = self.backbone(x)
        if not self.training:
            return f
        return f, self.classifier(self.neck(f))
