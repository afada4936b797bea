"""ReIDZoo: the 32 CION backbones (10 families) on timm, with the authors' checkpoints loadable,
and two micro models (``resnet_micro``, ``vit_micro``; not part of the 32) for tests and the demo.

Usage::

    from cion.models import create_model, list_models, model_info
    model = create_model("resnet50_ibn")            # (B, 3, 256, 128) -> (B, 2048)
    model = create_model("vit_small", checkpoint="ViT_S.pth")   # authors' release, strict load
    model.feature_dim                                # 384

See :mod:`cion.models.registry` (names, metadata), :mod:`cion.models.factory` (``create_model``),
:mod:`cion.models.checkpoint` (safe I/O), :mod:`cion.models.backbone` (pre-training helpers).
"""
from cion.models.factory import create_model
from cion.models.registry import FAMILIES, MICRO, ZOO, default_recipe, list_models, model_info

__all__ = ["FAMILIES", "MICRO", "ZOO", "create_model", "default_recipe", "list_models", "model_info"]
