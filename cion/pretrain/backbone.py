"""Backbones for pre-training: any ReIDZoo model via ``cion.models.create_model``, plus two tiny
test models (``test_resnet``, ``test_vit``) for unit tests and quick CPU smoke runs.

Every backbone maps (B, 3, H, W) images to (B, D) features and has a ``feature_dim`` attribute (D).
Multi-crop training feeds two input sizes (global and local views), so ViT-style models must
accept both (timm's ``dynamic_img_size``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cion.errors import CionError

TEST_ARCHS = ("test_resnet", "test_vit")


def _test_model(arch: str, img_size: tuple[int, int]) -> nn.Module:
    import cion.compat  # noqa: F401  (must precede torchvision / timm)
    from timm.models.resnet import BasicBlock, ResNet
    from timm.models.vision_transformer import VisionTransformer

    if arch == "test_resnet":      # BatchNorm CNN, 4 stages of one block, ~0.2M parameters
        m = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=0, channels=(16, 32, 64, 64),
                   stem_width=16, zero_init_last=False)  # see cion.models.builders.build_resnet
    else:                          # LayerNorm ViT, 2 blocks of width 64, patch 8
        m = VisionTransformer(img_size=img_size, patch_size=8, embed_dim=64, depth=2,
                              num_heads=2, num_classes=0, dynamic_img_size=True)
    m.feature_dim = m.num_features
    return m


def build_backbone(arch: str, img_size: tuple[int, int] = (256, 128)) -> nn.Module:
    """A randomly initialised backbone ``arch`` for inputs of ``img_size`` (H, W)."""
    if arch in TEST_ARCHS:
        return _test_model(arch, img_size)
    try:
        from cion.models import create_model
    except ImportError as err:
        raise CionError(f"backbone '{arch}' needs cion.models (the ReIDZoo), which could not be "
                        f"imported ({err}). Fix: reinstall cion, or use --arch test_resnet") from None
    return create_model(arch, img_size=tuple(img_size))  # unknown names: CionError naming close ones


def is_cnn(arch: str, model: nn.Module) -> bool:
    """Whether channels_last memory format helps: the zoo's flag, else "has BatchNorm"."""
    if arch not in TEST_ARCHS:
        from cion.models import model_info
        return bool(model_info(arch)["channels_last"])
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def feature_width(model: nn.Module, img_size: tuple[int, int]) -> int:
    """Output width D of a backbone (its ``width`` attribute, else one dry forward)."""
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
    """Backbone ``arch`` with weights from a ``backbone.safetensors`` written by pre-training."""
    if arch not in TEST_ARCHS:
        from cion.models import create_model
        return create_model(arch, checkpoint=str(checkpoint), img_size=tuple(img_size))
    from cion.models.checkpoint import read_backbone_file

    tensors, meta = read_backbone_file(checkpoint)             # CionError if not safetensors
    if meta.get("arch") not in (None, arch):
        raise CionError(f"{checkpoint} holds a '{meta['arch']}' backbone, not '{arch}'. Fix: "
                        f"load it as '{meta['arch']}' (--arch {meta['arch']})")
    model = build_backbone(arch, img_size)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[1:3]) or lines[0]
        raise CionError(f"{checkpoint} does not fit {arch} at {img_size[0]}x{img_size[1]} "
                        f"({detail[:300]}). Fix: load it as the arch it was trained as (for "
                        "test_vit also at its training image size)") from None
    return model
