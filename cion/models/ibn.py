"""IBN-Net-a (Pan et al., ECCV 2018) as used by CION's ResNet-IBN backbones.

IBN-a replaces ``bn1`` of every residual block in ``layer1``-``layer3`` with :class:`IBN`:
instance normalisation (affine, no running statistics) on the first ``planes // 2`` channels and
batch normalisation on the rest. The stem ``bn1`` and all of ``layer4`` keep plain BN. Parameter
names (``bn1.IN.weight``, ``bn1.BN.running_mean``...) equal those of the authors' checkpoints and
of FastReID, so released weights load without renaming.
"""
from __future__ import annotations

import torch
from torch import nn


class IBN(nn.Module):
    """Instance-Batch Normalisation: IN on the first ``int(planes * ratio)`` channels, BN on the rest.

    Input and output: (B, planes, H, W), any memory format.
    """

    def __init__(self, planes: int, ratio: float = 0.5):
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = torch.split(x, (self.half, x.shape[1] - self.half), dim=1)
        return torch.cat((self.IN(first.contiguous()), self.BN(second.contiguous())), dim=1)


def convert_resnet_to_ibn_a(model: nn.Module, stages: tuple[str, ...] = ("layer1", "layer2", "layer3")) -> nn.Module:
    """Turn a timm/torchvision ResNet into IBN-a in place: ``bn1`` of each block in ``stages`` becomes IBN.

    The replacement keeps the BN half's initialisation (weight 1, bias 0) and is returned for chaining.
    """
    for stage_name in stages:
        for block in getattr(model, stage_name):
            planes = block.bn1.num_features
            block.bn1 = IBN(planes)
    return model


def set_last_stride_1(model: nn.Module) -> nn.Module:
    """Make ``layer4`` of a ResNet keep the resolution (ReID "last stride 1"), in place.

    256x128 input then gives a 16x8 final map instead of 8x4. Works for BasicBlock (stride on
    ``conv1``) and Bottleneck (stride on ``conv2``) and the strided 1x1 ``downsample`` conv.
    """
    first = model.layer4[0]
    for conv_name in ("conv1", "conv2"):
        conv = getattr(first, conv_name, None)
        if isinstance(conv, nn.Conv2d) and conv.stride != (1, 1):
            conv.stride = (1, 1)
    if first.downsample is not None:
        for module in first.downsample.modules():
            if isinstance(module, nn.Conv2d):
                module.stride = (1, 1)
            elif isinstance(module, nn.AvgPool2d) and module.stride not in (1, (1, 1)):
                raise ValueError("last stride 1 is not defined for average-pool downsampling (ResNet-D)")
    return model
