"""Backbones as the training stages use them: any registered model (the 32 ReIDZoo backbones
and the micro models ``resnet_micro`` / ``vit_micro``), built at random or loaded from a
``backbone.safetensors``, plus two facts pre-training needs (output width, CNN or not).

Every backbone maps (B, 3, H, W) images to (B, D) features and has a ``feature_dim`` attribute (D).
Multi-crop training feeds two input sizes (global and local views), so ViT-style models must
accept both (timm's ``dynamic_img_size``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cion.models.factory import create_model
from cion.models.registry import get_entry


def build_backbone(arch: str, img_size: tuple[int, int] = (256, 128)) -> nn.Module:
    """A randomly initialised backbone ``arch`` for inputs of ``img_size`` (H, W); unknown
    names raise :class:`cion.errors.CionError` naming close ones."""
    return create_model(arch, img_size=tuple(img_size))


def is_cnn(arch: str, model: nn.Module | None = None) -> bool:
    """Whether channels_last memory format helps: the registry's CNN flag."""
    return get_entry(arch).is_cnn


def feature_width(model: nn.Module, img_size: tuple[int, int]) -> int:
    """Output width D of a backbone (its ``feature_dim`` attribute, else one dry forward)."""
    width = (getattr(model, "feature_dim", None) or getattr(model, "width", None)
             or getattr(model, "num_features", None))
    if width:
        return int(width)
    was = model.training
    model.eval()
    with torch.no_grad():
        width = model(torch.zeros(2, 3, *img_size)).shape[-1]
    model.train(was)
    return int(width)


def load_backbone(arch: str, checkpoint: str | Path, img_size: tuple[int, int] = (256, 128)) -> nn.Module:
    """Backbone ``arch`` with weights from a ``backbone.safetensors`` (pre-training, fine-tuning)
    or, for ReIDZoo models, the authors' ``.pth``; strict (see :mod:`cion.models.checkpoint`)."""
    return create_model(arch, checkpoint=str(checkpoint), img_size=tuple(img_size))
