"""Key mapping from the authors' backbone state-dict layout (CION_ReIDZoo) to our timm-based models.

``official_to_ours(family, keys)`` returns ``{official_key: our_key}`` for every key it can name;
keys it cannot name are left out, and the loader reports them. The rules per family (checked
against the reference layouts in ``shared/reference/reidzoo``):

- resnet, resnet_ibn, ghostnet, volo, vit: identical names.
- convnext, edgenext: ``downsample_layers.0.`` -> ``stem.``, ``downsample_layers.i.`` ->
  ``stages.i.downsample.``, ``stages.i.j.`` -> ``stages.i.blocks.j.``, ``dwconv`` -> ``conv_dw``,
  ``pwconvK`` -> ``mlp.fcK``, final ``norm.`` -> ``head.norm.``.
- swin: ``layers.i.downsample.`` -> ``layers.{i+1}.downsample.``, ``norm3.`` -> ``norm.``;
  ``relative_position_index`` is a derived buffer (not saved by timm) that the loader verifies.
- fastvit: Apple's flat ``network.N`` list -> ``stages.S.{downsample.proj, pos_emb.pos_enc,
  blocks.J}`` (S counts the downsample layers before N) plus the module renames of timm.
- repvit: flat ``features.N`` -> ``stem.conv1/2``, ``stages.S.blocks.J`` and
  ``stages.S.downsample.{pre_block, spatial_downsample, channel_downsample, ffn}``.
"""
from __future__ import annotations

import bisect
import re
from typing import Callable, Iterable


def _regex_rules(rules: list[tuple[str, str]]) -> Callable[[str], str]:
    compiled = [(re.compile(p), r) for p, r in rules]

    def apply(key: str) -> str:
        for pattern, repl in compiled:
            key = pattern.sub(repl, key)
        return key

    return apply


_convnext_like = _regex_rules([
    (r"^downsample_layers\.0\.", "stem."),
    (r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample."),
    (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"\.dwconv\.", ".conv_dw."),
    (r"\.pwconv(\d)\.", r".mlp.fc\1."),
    (r"^norm\.", "head.norm."),
])


def _map_convnext(keys: list[str]) -> dict[str, str]:
    return {k: _convnext_like(k) for k in keys}


def _map_identity(keys: list[str]) -> dict[str, str]:
    return {k: k for k in keys}


def _map_swin(keys: list[str]) -> dict[str, str]:
    out = {}
    for k in keys:
        m = re.match(r"^layers\.(\d+)\.downsample\.(.*)$", k)
        if m:
            out[k] = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
        elif k.startswith("norm3."):
            out[k] = "norm." + k[len("norm3."):]
        else:
            out[k] = k
    return out


_fastvit_modules = _regex_rules([
    (r"^patch_embed\.", "stem."),
    (r"rbr_conv", "conv_kxk"),
    (r"rbr_scale", "conv_scale"),
    (r"rbr_skip", "identity"),
    (r"^conv_exp\.", "final_conv."),
    (r"lkb_origin", "large_conv"),
    (r"convffn", "mlp"),
    (r"se\.reduce", "se.fc1"),
    (r"se\.expand", "se.fc2"),
    (r"layer_scale_(\d)$", r"layer_scale_\1.gamma"),
    (r"layer_scale$", "layer_scale.gamma"),
])


def _map_fastvit(keys: list[str]) -> dict[str, str]:
    # network.N.proj.* are the downsample layers between stages; stage of N = how many lie at or before N
    stage_ends = sorted({int(m.group(1)) for k in keys if (m := re.match(r"^network\.(\d+)\.proj\.", k))})
    out = {}
    for k in keys:
        new = k
        m = re.match(r"^network\.(\d+)\.(.*)$", k)
        if m:
            n, rest = int(m.group(1)), m.group(2)
            s = bisect.bisect_right(stage_ends, n)
            if rest.startswith("proj."):
                new = f"stages.{s}.downsample.{rest}"
            elif rest.startswith("pe."):
                new = f"stages.{s}.pos_emb.pos_enc.{rest[len('pe.'):]}"
            else:
                new = f"stages.{s}.blocks.{rest}"
        out[k] = _fastvit_modules(new)
    return out


_repvit_block = _regex_rules([
    (r"^token_mixer\.0\.", "token_mixer."),
    (r"^token_mixer\.1\.conv_reduce\.", "se.fc1."),
    (r"^token_mixer\.1\.conv_expand\.", "se.fc2."),
    (r"^channel_mixer\.m\.0\.", "channel_mixer.conv1."),
    (r"^channel_mixer\.m\.2\.", "channel_mixer.conv2."),
])
_repvit_downsample = _regex_rules([
    (r"^token_mixer\.0\.", "spatial_downsample."),
    (r"^token_mixer\.2\.", "channel_downsample."),
    (r"^channel_mixer\.m\.0\.", "ffn.conv1."),
    (r"^channel_mixer\.m\.2\.", "ffn.conv2."),
])


def _map_repvit(keys: list[str]) -> dict[str, str]:
    parsed = [(k, re.match(r"^features\.(\d+)\.(.*)$", k)) for k in keys]
    blocks = sorted({int(m.group(1)) for _, m in parsed if m and int(m.group(1)) > 0})
    # a stride-2 row has a 1x1 channel conv as token_mixer.2
    stride2 = {int(m.group(1)) for _, m in parsed if m and m.group(2).startswith("token_mixer.2.")}
    place: dict[int, tuple[str, Callable[[str], str]]] = {}
    stage, j = 0, 0
    for n in blocks:
        if n + 1 in stride2:
            place[n] = (f"stages.{stage + 1}.downsample.pre_block.", _repvit_block)
        elif n in stride2:
            stage, j = stage + 1, 0
            place[n] = (f"stages.{stage}.downsample.", _repvit_downsample)
        else:
            place[n] = (f"stages.{stage}.blocks.{j}.", _repvit_block)
            j += 1
    out = {}
    for k, m in parsed:
        if not m:
            continue
        n, rest = int(m.group(1)), m.group(2)
        if n == 0:
            stem = re.match(r"^(\d+)\.(.*)$", rest)
            if stem and stem.group(1) in ("0", "2"):
                out[k] = f"stem.conv{1 if stem.group(1) == '0' else 2}.{stem.group(2)}"
        else:
            prefix, rules = place[n]
            out[k] = prefix + rules(rest)
    return out


_MAPPERS: dict[str, Callable[[list[str]], dict[str, str]]] = {
    "resnet": _map_identity, "resnet_ibn": _map_identity, "ghostnet": _map_identity,
    "volo": _map_identity, "vit": _map_identity, "convnext": _map_convnext, "edgenext": _map_convnext,
    "swin": _map_swin, "fastvit": _map_fastvit, "repvit": _map_repvit,
}

# Buffers the authors save but timm recomputes (non-persistent): verified equal instead of copied.
DERIVED_BUFFER_SUFFIXES = ("relative_position_index",)


def official_to_ours(family: str, keys: Iterable[str]) -> dict[str, str]:
    """Map the authors' backbone keys (prefix already stripped) of ``family`` to our model's keys."""
    return _MAPPERS[family](list(keys))


def ours_to_official(family: str, official_keys: Iterable[str]) -> dict[str, str]:
    """Inverse of :func:`official_to_ours` for a given official key list: ``{our_key: official_key}``."""
    return {ours: off for off, ours in official_to_ours(family, official_keys).items()}
