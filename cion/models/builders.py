"""Builders for the ten ReIDZoo families on top of timm, with the authors' structure where it differs.

Every builder returns an ``nn.Module`` mapping (B, 3, H, W) float images to (B, D) features
(``num_classes=0``: no classifier). Differences from plain timm, each matching the authors' code:

- ResNet / ResNet-IBN: ``layer4`` stride 1; IBN-a (ours, :mod:`cion.models.ibn`) in layer1-3;
  residual branches not zero-initialised (DINO's torchvision ResNet, IBN-Net).
- ViT: the ICS convolutional stem (:mod:`cion.models.vit_ics`); position embeddings resampled
  on the fly for other input sizes (``dynamic_img_size``).
- Swin: window 8, ``always_partition`` (windows never clamped), dynamic attention masks so
  128x64 crops work.
- VOLO: the 4-D position embedding is resampled (bicubic) when the token grid differs from the
  one the model was built for.
- RepViT: GhostNet-style squeeze-excite (hard-sigmoid gate, width/4 rounded to 4) as in CION.
- GhostNet, EdgeNeXt, FastViT, ConvNeXt: timm as is.
"""
from __future__ import annotations

import cion.compat  # noqa: F401  (must precede torchvision / timm)

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
import timm
from timm.layers import SEModule
from timm.models.volo import VOLO
from torch import nn

from cion.models.ibn import convert_resnet_to_ibn_a, set_last_stride_1
from cion.models.vit_ics import ICSPatchEmbed


def _timm(name: str, **kw) -> nn.Module:
    """A randomly initialised timm model without classifier (never downloads weights)."""
    kw.setdefault("num_classes", 0)
    return timm.create_model(name, pretrained=False, **kw)


def build_resnet(timm_name: str, img_size, ibn: bool = False, **kw) -> nn.Module:
    """ResNet with last stride 1; ``ibn=True`` gives IBN-a. Output width 512 (R18) or 2048.

    The last BatchNorm of each residual block starts at weight 1, not 0 (timm's
    ``zero_init_last``): DINO's and IBN-Net's initialisation. With zero-initialised residual
    branches, from-scratch self-distillation of the demo's small ResNet on the synthetic world
    stayed at random zero-shot mAP and cross-camera positives drove the teacher to the uniform
    output; starting them at 1, the same true-identity run gained 11 points
    (``tests/test_pretrain_learns.py`` guards it).
    """
    kw.setdefault("zero_init_last", False)
    model = set_last_stride_1(_timm(timm_name, **kw))
    if ibn:
        convert_resnet_to_ibn_a(model)
    return model


def build_vit_ics(timm_name: str, img_size, **kw) -> nn.Module:
    """timm ViT (CLS token after the final norm) with the ICS conv stem, built for ``img_size``."""
    kw.setdefault("dynamic_img_size", True)
    return _timm(timm_name, img_size=tuple(img_size), embed_layer=ICSPatchEmbed, **kw)


def build_swin(timm_name: str, img_size, **kw) -> nn.Module:
    """timm Swin with window 8 and always-partition (the authors' detection-style backbone)."""
    kw.setdefault("window_size", 8)
    kw.setdefault("always_partition", True)
    kw.setdefault("strict_img_size", False)
    return _timm(timm_name, img_size=tuple(img_size), **kw)


class ReIDVolo(VOLO):
    """timm VOLO whose position embedding (1, h, w, C) is resampled to the actual token grid."""

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        for idx, block in enumerate(self.network):
            if idx == 2 and self.pos_embed is not None:
                x = x + _resample_grid_pos_embed(self.pos_embed, x.shape[1:3])
                x = self.pos_drop(x)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        B, H, W, C = x.shape
        return x.reshape(B, -1, C)


def _resample_grid_pos_embed(pos: torch.Tensor, size) -> torch.Tensor:
    """(1, h, w, C) -> (1, H, W, C) by bicubic interpolation; returned unchanged when sizes agree."""
    if tuple(pos.shape[1:3]) == tuple(size):
        return pos
    out = F.interpolate(pos.permute(0, 3, 1, 2), size=tuple(int(s) for s in size), mode="bicubic",
                        align_corners=False)
    return out.permute(0, 2, 3, 1)


def build_volo(timm_name: str, img_size, **kw) -> nn.Module:
    """timm VOLO built for ``img_size`` (pos_embed [1, H/16, W/16, C]), accepting other sizes."""
    model = _timm(timm_name, img_size=tuple(img_size), **kw)
    if type(model) is not VOLO:
        raise TypeError(f"expected timm VOLO, got {type(model).__name__}")
    # Same parameters and modules; only forward_tokens differs (position-embedding resampling).
    model.__class__ = ReIDVolo
    return model


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """MobileNet rounding as in the authors' GhostNet/RepViT squeeze-excite (round-down limit 0.9)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def build_repvit(timm_name: str, img_size, **kw) -> nn.Module:
    """timm RepViT with CION's squeeze-excite: hard-sigmoid gate, reduced width round(C/4, 4)."""
    model = _timm(timm_name, **kw)
    for module in list(model.modules()):
        se = getattr(module, "se", None)
        if isinstance(se, SEModule):
            channels = se.fc1.in_channels
            module.se = SEModule(channels, rd_channels=_make_divisible(channels * 0.25, 4),
                                 gate_layer="hard_sigmoid")
    return model


def build_plain(timm_name: str, img_size, **kw) -> nn.Module:
    """Any timm model as is (GhostNet, EdgeNeXt, FastViT, ConvNeXt)."""
    return _timm(timm_name, **kw)


def build_resnet_micro(timm_name: str, img_size, **kw) -> nn.Module:
    """``resnet_micro``: a BatchNorm ResNet of 4 stages of one basic block (widths 16/32/64/64,
    stem 16), 64-d features, ~0.2M parameters; residual branches not zero-initialised (see
    :func:`build_resnet`). Not a ReIDZoo model: unit tests and the CPU demo."""
    from timm.models.resnet import BasicBlock, ResNet

    kw.setdefault("zero_init_last", False)
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=0, channels=(16, 32, 64, 64),
                  stem_width=16, **kw)


def build_vit_micro(timm_name: str, img_size, **kw) -> nn.Module:
    """``vit_micro``: a LayerNorm ViT of 2 blocks of width 64 (2 heads), patch 8, built for
    ``img_size`` and accepting other sizes (``dynamic_img_size``), 64-d CLS features. Not a
    ReIDZoo model: unit tests."""
    from timm.models.vision_transformer import VisionTransformer

    kw.setdefault("dynamic_img_size", True)
    return VisionTransformer(img_size=tuple(img_size), patch_size=8, embed_dim=64, depth=2,
                             num_heads=2, num_classes=0, **kw)
