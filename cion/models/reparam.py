"""Inference-time re-parameterisation of RepViT and FastViT (structural re-parameterisation).

The authors' checkpoints hold the train-time form (parallel conv / scale / identity branches, each
with BN). For inference the branches and BNs fold into single convolutions: same function (in eval
mode, up to float rounding), fewer kernels, faster. Re-parameterise *after* loading weights; the
result cannot load training-form checkpoints any more.
"""
from __future__ import annotations

import cion.compat  # noqa: F401  (must precede torchvision / timm)

from torch import nn

from cion.errors import CionError
from cion.models.registry import get_entry


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold the branches of a RepViT/FastViT model for inference; returns the model in eval mode.

    Uses timm's ``fuse()`` / ``reparameterize()`` methods. BN running statistics are folded in, so
    the result matches ``model.eval()`` (not train mode). ``inplace=False`` works on a deep copy.
    The returned model has ``reparameterized = True`` and keeps ``feature_dim`` / ``zoo_name``.
    """
    from timm.models import reparameterize_model

    name = getattr(model, "zoo_name", None)
    if name is None:
        raise CionError("reparameterize() needs a model made by cion.models.create_model")
    entry = get_entry(name)
    if not entry.reparameterizable:
        raise CionError(f"{name} has no re-parameterisable branches (only the RepViT and FastViT families do)")
    if getattr(model, "reparameterized", False):
        return model
    model.eval()
    fused = reparameterize_model(model, inplace=inplace)
    fused.eval()
    fused.reparameterized = True
    return fused
