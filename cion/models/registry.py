"""The ReIDZoo registry: names and metadata of the 32 backbones (10 families) and of the two
micro models (``resnet_micro``, ``vit_micro``: not part of the 32; unit tests and the demo).

This module only describes models; :mod:`cion.models.factory` builds them (``create_model``)
and :mod:`cion.models.checkpoint` reads and writes their weights. Dependencies run one way:
registry <- checkpoint <- factory (timm's ``_registry`` / ``_helpers`` / ``_factory``).

Every model maps float images (B, 3, H, W) to features (B, D). ``D`` is ``model.feature_dim``.
Models are built for 256x128 (height x width) and also accept 128x64 local crops (CNNs accept
any size; ViT/VOLO resample their position embeddings; Swin pads to whole windows). CNNs accept
``channels_last`` inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# Sec. 4.1 / appendix A.5 of the paper: the only per-model pre-training setting it states.
_PAPER_RECIPE = {"resnet50_ibn": 120}
_STRUCTURES = {
    "resnet": "timm ResNet with last stride 1 (authors' ResNet: identical keys)",
    "resnet_ibn": "ours: timm ResNet + IBN-a in layer1-3 bn1 (bn1.IN/bn1.BN), last stride 1 (authors' keys)",
    "ghostnet": "timm GhostNet (identical to the authors' keys and forward)",
    "edgenext": "timm EdgeNeXt (authors' original layout renamed on load)",
    "repvit": "timm RepViT with the authors' squeeze-excite (hard-sigmoid, width/4 rounded to 4); "
              "flat features.N renamed on load",
    "fastvit": "timm FastViT (Apple ml-fastvit train-time layout renamed on load)",
    "convnext": "timm ConvNeXt (facebookresearch layout renamed on load)",
    "volo": "timm VOLO built at 256x128 (pos_embed 16x8, resampled for other sizes)",
    "vit": "authors' ICS ViT: timm ViT + convolutional IBN stem (patch_embed.conv, 8x8 proj)",
    "swin": "authors' Swin: timm Swin with window 8, always_partition; layers.i.downsample/norm3 renamed on load",
    "micro": "not a ReIDZoo model: a tiny timm network for unit tests and the CPU demo",
}


@dataclass(frozen=True)
class ZooEntry:
    """Static description of one ReIDZoo backbone.

    ``paper_params_m``: parameters in millions as the paper's Tab. 3 lists them (for ViT this
    includes the 1000-class ``fc`` of the standalone model, which checkpoints do not contain).
    ``official_params``: backbone parameters of the authors' model (reference layouts).
    ``mAP``: the authors' TransReID-finetuned (Market-1501, MSMT17) mAP at 256x128, in percent
    (paper Tab. 3); None for the micro models.
    ``micro``: True for the micro models, which are registered beside the zoo but are not
    among its 32 (``list_models(include_micro=True)``).
    """

    name: str
    family: str
    timm_name: str
    builder: str
    feature_dim: int
    official_params: int
    paper_params_m: Optional[float]
    mAP: Optional[tuple[float, float]]
    teacher_prefix: str
    reparameterizable: bool = False
    builder_kwargs: dict = field(default_factory=dict)
    micro: bool = False

    @property
    def is_cnn(self) -> bool:
        return self.family not in ("vit", "swin", "volo")

    @property
    def structure(self) -> str:
        return _STRUCTURES["micro" if self.micro else self.family]

    @property
    def vit_classifier_params(self) -> int:
        """Parameters of the standalone ViT's unused 1000-class ``fc`` (counted in the paper's
        Tab. 3, absent here)."""
        return self.feature_dim * 1000 + 1000 if self.family == "vit" and not self.micro else 0


def _e(name, family, timm_name, builder, dim, params, spec, mAP, prefix, **extra):
    return ZooEntry(name, family, timm_name, builder, dim, params, spec, mAP, prefix, **extra)


_M, _B = "module.backbone.", "backbone."
_ENTRIES = [
    _e("resnet18", "resnet", "resnet18", "resnet", 512, 11176512, 11.2, (89.3, 55.6), _M),
    _e("resnet50", "resnet", "resnet50", "resnet", 2048, 23508032, 23.5, (92.8, 67.7), _M),
    _e("resnet101", "resnet", "resnet101", "resnet", 2048, 42500160, 42.5, (94.0, 73.2), _M),
    _e("resnet152", "resnet", "resnet152", "resnet", 2048, 58143808, 58.1, (94.2, 74.5), _M),
    _e("resnet18_ibn", "resnet_ibn", "resnet18", "resnet", 512, 11176512, None, (90.0, 56.1), _M,
       builder_kwargs={"ibn": True}),
    _e("resnet50_ibn", "resnet_ibn", "resnet50", "resnet", 2048, 23508032, None, (93.7, 72.3), _M,
       builder_kwargs={"ibn": True}),
    _e("resnet101_ibn", "resnet_ibn", "resnet101", "resnet", 2048, 42500160, None, (94.3, 75.8), _M,
       builder_kwargs={"ibn": True}),
    _e("resnet152_ibn", "resnet_ibn", "resnet152", "resnet", 2048, 58143808, None, (94.6, 76.7), _M,
       builder_kwargs={"ibn": True}),
    _e("ghostnet_0_5", "ghostnet", "ghostnet_050", "plain", 1280, 1306292, 1.3, (81.0, 39.6), _M),
    _e("ghostnet_1_0", "ghostnet", "ghostnet_100", "plain", 1280, 3901508, 3.9, (87.7, 53.7), _M),
    _e("ghostnet_1_3", "ghostnet", "ghostnet_130", "plain", 1280, 6077820, 6.1, (88.8, 55.4), _M),
    _e("edgenext_x_small", "edgenext", "edgenext_x_small", "plain", 192, 2143804, 2.1, (88.7, 57.9), _B),
    _e("edgenext_small", "edgenext", "edgenext_small", "plain", 304, 5281832, 5.3, (91.3, 63.2), _B),
    _e("edgenext_base", "edgenext", "edgenext_base", "plain", 584, 17926292, 17.9, (92.4, 68.6), _B),
    _e("repvit_m0_9", "repvit", "repvit_m0_9", "repvit", 384, 4717404, 4.7, (92.8, 68.4), _M,
       reparameterizable=True),
    _e("repvit_m1_0", "repvit", "repvit_m1_0", "repvit", 448, 6402104, 6.4, (93.1, 69.5), _M,
       reparameterizable=True),
    _e("repvit_m1_5", "repvit", "repvit_m1_5", "repvit", 512, 13616384, 13.6, (92.8, 69.5), _M,
       reparameterizable=True),
    _e("fastvit_s12", "fastvit", "fastvit_s12", "plain", 1024, 8448576, 8.5, (91.2, 59.0), _M,
       reparameterizable=True),
    _e("fastvit_sa12", "fastvit", "fastvit_sa12", "plain", 1024, 10555968, 10.6, (90.9, 59.0), _M,
       reparameterizable=True),
    _e("fastvit_sa24", "fastvit", "fastvit_sa24", "plain", 1024, 20529216, 20.5, (92.9, 69.6), _M,
       reparameterizable=True),
    _e("convnext_tiny", "convnext", "convnext_tiny", "plain", 768, 27820128, 27.8, (92.0, 68.9), _B),
    _e("convnext_small", "convnext", "convnext_small", "plain", 768, 49454688, 49.5, (92.9, 69.9), _B),
    _e("convnext_base", "convnext", "convnext_base", "plain", 1024, 87566464, 87.6, (93.4, 72.7), _B),
    _e("volo_d1", "volo", "volo_d1_224", "volo", 384, 25835928, 25.8, (93.0, 73.9), _M),
    _e("volo_d2", "volo", "volo_d2_224", "volo", 512, 57617520, 57.6, (92.1, 70.9), _M),
    _e("volo_d3", "volo", "volo_d3_224", "volo", 512, 85264256, 85.3, (90.5, 62.8), _M),
    _e("vit_tiny", "vit", "vit_tiny_patch16_224", "vit", 192, 6233856, 6.4, (91.4, 65.0), _M),
    _e("vit_small", "vit", "vit_small_patch16_224", "vit", 384, 23001024, 23.4, (92.8, 70.3), _M),
    _e("vit_base", "vit", "vit_base_patch16_224", "vit", 768, 88385856, 89.2, (93.1, 72.6), _M),
    _e("swin_tiny", "swin", "swin_tiny_patch4_window7_224", "swin", 768, 27527082, 27.5, (92.5, 71.1), _B),
    _e("swin_small", "swin", "swin_small_patch4_window7_224", "swin", 768, 48853050, 48.9, (93.6, 76.0), _B),
    _e("swin_base", "swin", "swin_base_patch4_window7_224", "swin", 1024, 86764280, 86.8, (94.0, 76.7), _B),
]
ZOO: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}
FAMILIES = tuple(dict.fromkeys(e.family for e in _ENTRIES))

#: The micro models: registered beside the zoo, not part of its 32. ``resnet_micro``: a
#: BatchNorm ResNet, 4 stages of one basic block (widths 16/32/64/64), 0.2M parameters;
#: ``vit_micro``: a LayerNorm ViT, 2 blocks of width 64, patch 8 (0.15M at 256x128). Both give
#: 64-d features. Parameters as built at 256x128.
MICRO: dict[str, ZooEntry] = {e.name: e for e in (
    ZooEntry("resnet_micro", "resnet", "resnet_micro", "micro_resnet", 64, 172640, None, None, _M, micro=True),
    ZooEntry("vit_micro", "vit", "vit_micro", "micro_vit", 64, 145344, None, None, _M, micro=True),
)}
#: Old names that still resolve (the micro models were ``test_resnet`` / ``test_vit``).
ALIASES = {"test_resnet": "resnet_micro", "test_vit": "vit_micro"}


def list_models(family: Optional[str] = None, include_micro: bool = False) -> list[str]:
    """The 32 ReIDZoo names in the paper's Tab. 3 order, optionally only one family (e.g.
    ``'vit'``); ``include_micro`` appends the micro models (not part of the zoo)."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family '{family}'; known: {', '.join(FAMILIES)}")
    entries = _ENTRIES + (list(MICRO.values()) if include_micro else [])
    return [e.name for e in entries if family is None or e.family == family]


def canonical_name(name: str) -> str:
    """``name`` with an old alias (``test_resnet``, ``test_vit``) replaced by its model's name."""
    return ALIASES.get(name, name)


def get_entry(name: str) -> ZooEntry:
    """The registry entry of ``name`` (a zoo model, a micro model or an alias); a clear error
    listing close names when unknown."""
    from cion.errors import CionError

    name = canonical_name(name)
    entry = ZOO.get(name) or MICRO.get(name)
    if entry is None:
        import difflib

        close = difflib.get_close_matches(name, list(ZOO) + list(MICRO) + list(ALIASES), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise CionError(f"unknown ReIDZoo model '{name}'.{hint} See `cion zoo list --all`.")
    return entry


def default_recipe(name: str) -> dict:
    """Pre-training recipe hint: crops per image and batch size per GPU where the paper states one.

    Paper Sec. 4.1: 2 global crops at 256x128, local crops at 128x64, 100 epochs, N_id
    curriculum 2/4/6/8 (at epochs 0/40/60/80); its only per-model figure is ResNet50-IBN at 120
    images per V100 with 8 local crops. ``batch_size_per_gpu`` is None where nothing is stated
    (choose by GPU memory).
    """
    batch = _PAPER_RECIPE.get(get_entry(name).name)
    return {
        "global_crops": 2, "global_size": (256, 128), "local_crops": 8, "local_size": (128, 64),
        "epochs": 100, "ids_per_image_curriculum": {0: 2, 40: 4, 60: 6, 80: 8},
        "batch_size_per_gpu": batch,
        "source": "paper (8x V100)" if batch else "paper Sec. 4.1 defaults; batch size not stated for this model",
    }


def model_info(name: str) -> dict:
    """Metadata of one model: family, timm base, structure used, widths, parameters, recipe, mAP.

    Keys: ``name, family, timm_name, structure, feature_dim, params, params_paper_m, teacher_prefix,
    reparameterizable, channels_last, input_size, local_input_size, reported_mAP, recipe, micro``.
    ``params`` counts backbone parameters (no classifier, buffers excluded); it equals the authors'
    backbone count.
    """
    e = get_entry(name)
    return {
        "name": e.name,
        "family": e.family,
        "timm_name": e.timm_name,
        "structure": e.structure,
        "feature_dim": e.feature_dim,
        "params": e.official_params,
        "params_paper_m": e.paper_params_m,
        "teacher_prefix": e.teacher_prefix,
        "reparameterizable": e.reparameterizable,
        "channels_last": e.is_cnn,
        "input_size": (256, 128),
        "local_input_size": (128, 64),
        "reported_mAP": {"market1501": e.mAP[0], "msmt17": e.mAP[1]} if e.mAP else None,
        "recipe": default_recipe(name),
        "micro": e.micro,
    }
