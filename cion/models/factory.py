"""``create_model``: build a registered backbone (ReIDZoo or micro), optionally with weights.

Imports :mod:`cion.models.registry` (names, metadata) and :mod:`cion.models.checkpoint`
(weights); neither imports this module, so the model packages form no cycle.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from cion.models.registry import get_entry

_BUILDERS: dict[str, Callable] = {}


def _builders() -> dict[str, Callable]:
    if not _BUILDERS:
        from cion.models import builders

        _BUILDERS.update(resnet=builders.build_resnet, vit=builders.build_vit_ics, swin=builders.build_swin,
                         volo=builders.build_volo, repvit=builders.build_repvit, plain=builders.build_plain,
                         micro_resnet=builders.build_resnet_micro, micro_vit=builders.build_vit_micro)
    return _BUILDERS


def create_model(name: str, checkpoint=None, img_size=(256, 128), **kw):
    """Build backbone ``name``: (B, 3, H, W) images -> (B, feature_dim) features.

    Args:
        name: one of :func:`cion.models.list_models` (``include_micro=True`` adds the micro
            models; the old names ``test_resnet`` / ``test_vit`` still work).
        checkpoint: optional path to our ``.safetensors`` backbone file or to the authors' released
            ``.pth`` pre-training checkpoint (its ``teacher`` backbone is loaded). Loading is strict.
        img_size: (height, width) the transformer position embeddings / windows are built for;
            other sizes (e.g. 128x64 local crops) also work. Ignored by CNNs.
        **kw: passed to timm (e.g. ``drop_path_rate=0.1``).

    The model has ``feature_dim`` (the output width D) and ``zoo_name`` attributes, and after a
    checkpoint load ``checkpoint_report`` (:class:`cion.models.checkpoint.LoadReport`) (timm's
    ``num_features`` is the pre-pooling width, which differs for GhostNet: 480..1248 vs 1280). It is returned
    in train mode, like any freshly built torch module; call ``.eval()`` for inference.
    """
    entry = get_entry(name)
    if kw.get("num_classes", 0):
        from cion.errors import CionError

        raise CionError("create_model builds feature backbones (num_classes=0); put a classifier or BNNeck on top")
    model = _builders()[entry.builder](entry.timm_name, tuple(img_size), **entry.builder_kwargs, **kw)
    # timm's pooled output width: head_hidden_size where a pre-logits layer widens it (GhostNet, FastViT)
    width = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", entry.feature_dim)
    if width != entry.feature_dim:
        raise RuntimeError(f"{name}: built width {width} != registry {entry.feature_dim}")
    model.feature_dim = entry.feature_dim
    model.zoo_name = entry.name
    if checkpoint is not None:
        from cion.models.checkpoint import load_checkpoint

        model.checkpoint_report = load_checkpoint(model, checkpoint, entry.name)
    return model


def convert_official(src, arch: str, out, which: str = "teacher"):
    """Authors' ``.pth`` -> our ``.safetensors`` backbone file (strictly checked on the way).

    ``which``: the checkpoint entry to take, ``teacher`` (the released model) or ``student``.
    Returns the :class:`cion.models.checkpoint.LoadReport` of the load.
    """
    from cion.models.checkpoint import load_official_checkpoint, save_backbone

    model = create_model(arch)
    report = load_official_checkpoint(model, src, arch, which)
    save_backbone(model, out, {"arch": arch, "source": Path(src).name, "source_entry": which,
                               "source_epoch": report.meta.get("epoch")})
    return report
