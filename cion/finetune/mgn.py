"""MGN (Multiple Granularity Network, Wang et al. 2018) as the paper fine-tunes its headline
ResNet50-IBN (Sec. 4.1, Table 1: 93.3 / 74.3 mAP), following the fast-reid configuration the
authors ran:

- shared: the ResNet stem, ``layer1``, ``layer2`` and ``layer3[0]``;
- three branches, each with its own copy of ``layer3[1:]`` and ``layer4``, all at stride 1
  (a 24x8 map at 384x128 for a ResNet50), each followed by an extra ``BatchNorm2d``;
- branch 1 is pooled whole; branch 2 also as 2 horizontal stripes, branch 3 as 3: 8 heads
  ``b1, b2, b3, b21, b22, b31, b32, b33``;
- each head: GeM pooling (learnable p, initial 3) -> 1x1 conv C -> C/8 without bias (2048 -> 256)
  -> BatchNorm (bias frozen at 0, no ReLU) -> classifier (linear, or CircleSoftmax with
  s = 64, m = 0.35 as the authors);
- loss (:func:`mgn_loss`): label-smoothed (0.1) cross-entropy on the 8 heads, weight 1/8 each,
  plus soft-margin batch-hard triplet on b1, b2, b3, cat(b21, b22), cat(b31, b32, b33) after the
  BN, weight 0.2 each;
- test feature: the 8 post-BN features concatenated (8 x C/8: 2048 for a ResNet50),
  L2-normalised.

Works for the ResNet / ResNet-IBN backbones of the ReIDZoo (:func:`mgn_archs`) and the tiny
``resnet_micro`` (channels 64 -> heads of 8, test feature 64).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from cion.errors import CionError
from cion.finetune.losses import batch_hard_triplet, smoothed_cross_entropy
from cion.finetune.pooling import GeM

#: head names, in the order of every per-head list MGN returns
HEADS = ("b1", "b2", "b3", "b21", "b22", "b31", "b32", "b33")
#: the five triplet features, as groups of head indices concatenated
TRIPLET_GROUPS = {"b1": (0,), "b2": (1,), "b3": (2,), "b2_parts": (3, 4), "b3_parts": (5, 6, 7)}
CE_WEIGHT = 1.0 / 8
TRIPLET_WEIGHT = 0.2
LABEL_SMOOTHING = 0.1


def mgn_archs() -> list[str]:
    """Archs MGN can be built on: the zoo's ResNet / ResNet-IBN family and ``resnet_micro``."""
    from cion.models import list_models
    from cion.models.registry import get_entry

    return [n for n in list_models(include_micro=True)
            if get_entry(n).family in ("resnet", "resnet_ibn")]


def mgn_supported(arch: str) -> bool:
    """Whether ``arch`` (or its old alias, e.g. ``test_resnet``) is in :func:`mgn_archs`."""
    from cion.models.registry import canonical_name

    return canonical_name(arch) in mgn_archs()


class CircleSoftmax(nn.Module):
    """CircleSoftmax classifier (Sun et al. 2020, fast-reid's form): cosine similarities of the
    features to the class weights, re-weighted with the target: logits (B, C).

    Training needs the targets (the positive and negative logits differ); without targets
    (evaluation) it returns the plain scaled cosines ``s * cos``.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 64.0, margin: float = 0.35):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.001)
        self.s, self.m = float(scale), float(margin)

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.linear(F.normalize(features.float()), F.normalize(self.weight.float()))
        if targets is None:
            return self.s * cos
        alpha_p = (1 + self.m - cos.detach()).clamp_min(0)
        alpha_n = (cos.detach() + self.m).clamp_min(0)
        s_p = self.s * alpha_p * (cos - (1 - self.m))
        s_n = self.s * alpha_n * (cos - self.m)
        one_hot = F.one_hot(targets, cos.shape[1]).to(cos.dtype)
        return one_hot * s_p + (1 - one_hot) * s_n


class LinearClassifier(nn.Linear):
    """Bias-free linear classifier (initial weights N(0, 0.001)); ``targets`` are ignored."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__(in_features, num_classes, bias=False)
        nn.init.normal_(self.weight, std=0.001)

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(features)


class MGNHead(nn.Module):
    """GeM -> 1x1 conv (C -> r, no bias) -> BatchNorm1d(r) with frozen zero bias -> classifier.

    ``forward(map (B, C, h, w), targets)`` returns ``(feature (B, r) after the BN, logits (B, K)
    or None in eval)``.
    """

    def __init__(self, in_channels: int, reduce_dim: int, num_classes: int, classifier: str,
                 scale: float, margin: float):
        super().__init__()
        self.pool = GeM()
        self.reduce = nn.Conv2d(in_channels, reduce_dim, 1, bias=False)
        nn.init.kaiming_normal_(self.reduce.weight, mode="fan_out", nonlinearity="relu")
        self.bn = nn.BatchNorm1d(reduce_dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)
        self.classifier = (CircleSoftmax(reduce_dim, num_classes, scale, margin)
                           if classifier == "circle" else LinearClassifier(reduce_dim, num_classes))

    def forward(self, fmap: torch.Tensor, targets: torch.Tensor | None = None):
        pooled = self.pool(fmap)[..., None, None]               # (B, C, 1, 1)
        feat = self.bn(self.reduce(pooled).flatten(1))           # (B, r)
        if not self.training:
            return feat, None
        return feat, self.classifier(feat, targets)


def _check_resnet(backbone: nn.Module) -> None:
    need = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4")
    missing = [n for n in need if not hasattr(backbone, n)]
    if missing:
        raise CionError(f"MGN needs a ResNet-family backbone (stem, layer1..layer4); "
                        f"{type(backbone).__name__} has no {', '.join(missing)}. "
                        f"MGN fits: {', '.join(mgn_archs())}")


def _stride_one(layer: nn.Sequential) -> nn.Sequential:
    """Set every stride of ``layer`` (a ResNet stage) to 1, in place."""
    for m in layer.modules():
        if isinstance(m, nn.Conv2d) and m.stride != (1, 1):
            m.stride = (1, 1)
        elif isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)) and m.stride not in (1, (1, 1)):
            raise CionError("MGN: the backbone's layer4 downsamples by pooling (ResNet-D), which "
                            "has no stride-1 form. MGN fits: " + ", ".join(mgn_archs()))
    return layer


class MGN(nn.Module):
    """MGN on a ResNet / ResNet-IBN backbone (see the module docstring).

    Args:
        backbone: an arch name (built with random weights for ``img_size``) or a built (e.g.
            pre-trained) backbone of the family; its modules are reused (shared part) and
            copied (three branches).
        num_classes: training identities K.
        reduce_dim: head width r (default: the backbone's final channels / 8, 256 for a
            ResNet50).
        classifier: ``"linear"`` or ``"circle"`` (CircleSoftmax, ``scale``, ``margin``).

    ``forward(x (B, 3, H, W), targets (B,) or None)``:

    - training: ``{"features": [8 x (B, r)] post-BN, "logits": [8 x (B, K)]}`` (heads in
      :data:`HEADS` order; CircleSoftmax needs ``targets``);
    - evaluation: ``(B, 8 r)`` L2-normalised test feature.

    The input height must give at least 3 rows after layer3 (H >= 48).
    """

    def __init__(self, backbone: nn.Module | str, num_classes: int, *, reduce_dim: int | None = None,
                 classifier: str = "linear", scale: float = 64.0, margin: float = 0.35,
                 img_size: tuple[int, int] = (384, 128)):
        super().__init__()
        if isinstance(backbone, str):
            if not mgn_supported(backbone):
                raise CionError(f"MGN does not fit arch '{backbone}'. MGN fits: "
                                f"{', '.join(mgn_archs())}")
            from cion.models.backbone import build_backbone
            backbone = build_backbone(backbone, img_size)
        _check_resnet(backbone)
        if num_classes < 2:
            raise CionError(f"MGN needs at least 2 training identities, got {num_classes}")
        if classifier not in ("linear", "circle"):
            raise CionError(f"MGN classifier must be 'linear' or 'circle', got {classifier!r}")
        self.shared = nn.Sequential(backbone.conv1, backbone.bn1, backbone.act1, backbone.maxpool,
                                    backbone.layer1, backbone.layer2, backbone.layer3[0])
        rest = nn.Sequential(*list(backbone.layer3.children())[1:])
        channels = _out_channels(backbone.layer4)
        self.branches = nn.ModuleList(
            nn.Sequential(copy.deepcopy(rest), _stride_one(copy.deepcopy(backbone.layer4)))
            for _ in range(3))
        self.extra_bns = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(3))
        self.channels = channels
        self.reduce_dim = int(reduce_dim or max(1, channels // 8))
        self.num_classes = int(num_classes)
        self.heads = nn.ModuleList(MGNHead(channels, self.reduce_dim, num_classes, classifier,
                                           scale, margin) for _ in HEADS)
        self.feature_dim = len(HEADS) * self.reduce_dim
        self.backbone_frozen = False

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None):
        shared = self.shared(x)
        maps = [bn(branch(shared)) for branch, bn in zip(self.branches, self.extra_bns)]
        h = maps[0].shape[2]
        if h < 3:
            raise CionError(f"MGN: the input ({x.shape[2]}x{x.shape[3]}) leaves a {h}-row map, "
                            "too few for 3 stripes. Fix: use taller images (e.g. 384x128)")
        parts = [maps[0], maps[1], maps[2], *torch.tensor_split(maps[1], 2, dim=2),
                 *torch.tensor_split(maps[2], 3, dim=2)]
        outs = [head(p, targets) for head, p in zip(self.heads, parts)]
        feats = [f for f, _ in outs]
        if not self.training:
            return F.normalize(torch.cat(feats, 1).float(), dim=1)
        return {"features": feats, "logits": [lg for _, lg in outs]}

    # ---- freezing (first epochs of the recipe) ---------------------------------------------
    def freeze_backbone(self, frozen: bool = True) -> None:
        """Freeze (or release) the shared part and the three branches: no gradients and eval
        mode (BatchNorm statistics fixed), kept in eval by :meth:`train` while frozen; the
        extra BNs and the heads keep training.

        Under DDP, parameters without gradient must be allowed: build
        ``DistributedDataParallel(..., find_unused_parameters=True)``, or wrap after releasing.
        """
        self.backbone_frozen = bool(frozen)
        for module in (self.shared, self.branches):
            module.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone_frozen:
            self.shared.eval()
            self.branches.eval()
        return self


def _out_channels(layer: nn.Sequential) -> int:
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in layer[-1].modules() if isinstance(m, nn.BatchNorm2d)]
    return int(bns[-1].num_features if bns else convs[-1].out_channels)


def freeze_mgn_backbone(model: nn.Module, frozen: bool = True) -> None:
    """:meth:`MGN.freeze_backbone` on ``model`` or on the MGN inside a DDP wrapper."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, MGN):
        raise CionError(f"freeze_mgn_backbone expects an MGN model, got {type(inner).__name__}")
    inner.freeze_backbone(frozen)


def mgn_loss(outputs: dict, targets: torch.Tensor, *, ce_weight: float = CE_WEIGHT,
             triplet_weight: float = TRIPLET_WEIGHT, smoothing: float = LABEL_SMOOTHING):
    """The MGN training loss.

    Args:
        outputs: :class:`MGN`'s training output (``features``: 8 x (B, r) post-BN, ``logits``:
            8 x (B, K)).
        targets: (B,) identity labels 0..K-1.

    Returns:
        ``(total, terms)``: the scalar loss and a dict of the *unweighted* terms
        ``ce_<head>`` (8) and ``triplet_<group>`` (5, :data:`TRIPLET_GROUPS`), so that
        ``total = ce_weight * sum(ce) + triplet_weight * sum(triplet)``.
    """
    feats, logits = outputs["features"], outputs["logits"]
    if len(feats) != len(HEADS) or len(logits) != len(HEADS):
        raise CionError(f"mgn_loss expects {len(HEADS)} heads, got {len(feats)} features and "
                        f"{len(logits)} logits")
    terms = {}
    for name, lg in zip(HEADS, logits):
        terms[f"ce_{name}"] = smoothed_cross_entropy(lg.float(), targets, smoothing)
    for name, idx in TRIPLET_GROUPS.items():
        f = torch.cat([feats[i].float() for i in idx], 1)
        terms[f"triplet_{name}"] = batch_hard_triplet(f, targets, soft=True)
    total = (ce_weight * sum(v for k, v in terms.items() if k.startswith("ce_"))
             + triplet_weight * sum(v for k, v in terms.items() if k.startswith("triplet_")))
    return total, terms
