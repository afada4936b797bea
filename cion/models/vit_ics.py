"""The "ICS" convolutional patch embedding of CION's ViTs (from TransReID-SSL), as a timm ``embed_layer``.

Instead of timm's single 16x16/16 convolution, the image goes through a small IBN conv stem and then
an 8x8/8 projection (total stride 16):

    conv 7x7/2 3->64 (no bias) -> IBN(32 IN + 32 BN) -> ReLU
    conv 3x3/1 64->64          -> IBN(32 IN + 32 BN) -> ReLU
    conv 3x3/1 64->64          -> BN(64)             -> ReLU
    proj conv 8x8/8 64->C (with bias)

Parameter names (``patch_embed.conv.{0,1,3,4,6,7}.*``, ``patch_embed.proj.*``) equal the authors'
checkpoints. A 256x128 image gives 16x8 = 128 tokens.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from cion.models.ibn import IBN


def _pair(v: Union[int, Sequence[int]]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class ICSPatchEmbed(nn.Module):
    """Conv-stem patch embedding; (B, 3, H, W) -> (B, H/16 * W/16, C), or (B, H/16, W/16, C) for ``output_fmt='NHWC'``.

    Accepts the keyword arguments timm's VisionTransformer passes to an ``embed_layer``.
    ``H`` and ``W`` must be multiples of 16 unless ``strict_img_size`` is False (then the last
    partial patch is dropped by the strided convolution, as in the authors' code).
    """

    def __init__(self, img_size: Union[int, Sequence[int]] = (256, 128), patch_size: Union[int, Sequence[int]] = 16,
                 in_chans: int = 3, embed_dim: int = 768, bias: bool = True, hidden_dim: int = 64,
                 stem_stride: int = 2, strict_img_size: bool = True, output_fmt: Optional[str] = None,
                 flatten: bool = True, dynamic_img_pad: bool = False, norm_layer=None,
                 device=None, dtype=None):
        super().__init__()
        if norm_layer is not None or dynamic_img_pad:
            raise ValueError("ICSPatchEmbed supports neither an embedding norm nor dynamic padding")
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        if self.patch_size[0] != self.patch_size[1] or self.patch_size[0] % stem_stride:
            raise ValueError(f"patch size {self.patch_size} must be square and divisible by the stem stride")
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        self.output_fmt = output_fmt or "NCHW"
        self.flatten = flatten and output_fmt is None
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, hidden_dim, 7, stride=stem_stride, padding=3, bias=False, **dd),
            IBN(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 3, stride=1, padding=1, bias=False, **dd),
            IBN(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 3, stride=1, padding=1, bias=False, **dd),
            nn.BatchNorm2d(hidden_dim, **dd),
            nn.ReLU(inplace=True),
        )
        k = self.patch_size[0] // stem_stride
        self.proj = nn.Conv2d(hidden_dim, embed_dim, kernel_size=k, stride=k, bias=bias, **dd)

    def feat_ratio(self, as_scalar: bool = True):
        return self.patch_size[0] if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strict_img_size and tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"input size {tuple(x.shape[-2:])} != model size {self.img_size}; "
                             "build the model with dynamic_img_size=True for other sizes")
        x = self.proj(self.conv(x))                      # (B, C, h, w)
        if self.flatten:
            return x.flatten(2).transpose(1, 2)          # (B, h*w, C)
        if self.output_fmt == "NHWC":
            return x.permute(0, 2, 3, 1)                 # (B, h, w, C)
        return x
