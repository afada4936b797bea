"""Safe checkpoint I/O for ReIDZoo backbones.

Two formats are read:

- **our backbone files** (``.safetensors``): the model's ``state_dict`` in our (timm) names, with
  metadata ``format=cion-backbone``, ``arch``, ``feature_dim``. Written by :func:`save_backbone`.
  safetensors holds tensors only, so loading runs no code.
- **the authors' released pre-training checkpoints** (``.pth``): a ``torch.save`` dict with
  ``student``, ``teacher``, ``optimizer``, ``epoch``, ``args`` (an ``argparse.Namespace``), ``Loss``,
  ``fp16_scaler``. They are read with ``torch.load(weights_only=True)`` and an allow-list that adds
  exactly one class, ``argparse.Namespace``; a pickle naming any other global is refused
  (:class:`UnsafeCheckpointError`), never retried with ``weights_only=False``. The backbone is taken
  from ``teacher`` (``module.backbone.`` or ``backbone.`` prefix; the DINO head is ignored) and its
  keys are renamed to ours (:mod:`cion.models.convert`).

Loading is strict in both directions: every file backbone key must land on a parameter or buffer of
the same shape (the one exception: a ViT/VOLO ``pos_embed`` saved for another image size is
resampled to the model's token grid, and the report says so), and every parameter/persistent buffer of the model must be filled; otherwise
:class:`CheckpointMismatchError` lists what did not match and nothing is loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from cion.errors import CionError
from cion.fileio import atomic_write
from cion.models.convert import DERIVED_BUFFER_SUFFIXES, official_to_ours
from cion.models.registry import canonical_name, get_entry

PathLike = Union[str, os.PathLike]
ALLOWED_GLOBALS = (argparse.Namespace,)
BACKBONE_FORMAT = "cion-backbone"
OFFICIAL_PREFIXES = ("module.backbone.", "backbone.")
_MAX_LISTED = 20


class UnsafeCheckpointError(CionError):
    """The pickle references a global outside the allow-list; the file was not loaded."""


class CheckpointMismatchError(CionError):
    """Backbone keys or shapes in the file do not match the model; nothing was loaded."""


@dataclass
class LoadReport:
    """What a strict load did. ``loaded``: tensors copied; ``verified``: derived buffers checked equal;
    ``ignored``: file entries outside the backbone (DINO head etc.), by name."""

    path: str
    arch: str
    format: str
    prefix: str = ""
    loaded: int = 0
    verified: int = 0
    ignored: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"{self.arch}: loaded {self.loaded} backbone tensors from {self.path} ({self.format}"
                 + (f", prefix '{self.prefix}'" if self.prefix else "") + ")"]
        if self.verified:
            parts.append(f"{self.verified} derived index buffers verified")
        if self.ignored:
            parts.append(f"{len(self.ignored)} non-backbone entries ignored")
        if self.meta.get("resampled"):
            parts.append("position embedding resampled: " + ", ".join(self.meta["resampled"]))
        return "; ".join(parts)


def _listing(title: str, items: list[str]) -> str:
    shown = "\n    ".join(items[:_MAX_LISTED])
    more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


# --------------------------------------------------------------------------------------------- reading
def read_torch_checkpoint(path: PathLike) -> object:
    """``torch.load`` with ``weights_only=True`` plus ``argparse.Namespace``; clear errors otherwise.

    Raises :class:`UnsafeCheckpointError` naming the refused global, or :class:`CionError` for a
    missing / unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise CionError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"GLOBAL\s+([\w.]+)", text)
        if found is None:   # not a refused class: an unknown opcode, i.e. not a torch pickle at all
            detail = next((ln.strip() for ln in text.splitlines() if "Unsupported" in ln), "unpickling failed")
            raise CionError(f"cannot read {path} as a torch checkpoint ({detail}); is it the right, "
                            "complete file?") from None
        raise UnsafeCheckpointError(
            f"refused to load {path}: its pickle references the global '{found.group(1)}', which is not "
            "on the allow-list (tensors, plain containers, argparse.Namespace). cion loads checkpoints "
            "with weights_only=True and never executes code from a file. If the file is yours and "
            "trusted, re-save only its tensors (e.g. torch.save(ckpt['teacher'], ...)) or convert it "
            "to safetensors where it was made.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise CionError(f"cannot read {path} as a torch checkpoint ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); is the file complete?") from None


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_official_backbone(obj, path: PathLike = "<checkpoint>", which: str = "teacher"
                              ) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Backbone tensors of an authors' checkpoint with the prefix stripped.

    Returns ``(state, prefix, ignored)``: ``state`` maps official backbone keys (no prefix) to tensors,
    ``prefix`` is the stripped prefix ('' for an already stripped state dict) and ``ignored`` lists the
    entries of the chosen state dict that are not backbone (the DINO head).
    """
    if isinstance(obj, dict) and which in obj:
        sd = obj[which]
        if not _is_tensor_dict(sd):
            raise CionError(f"{path}: entry '{which}' is not a state dict of tensors")
    elif _is_tensor_dict(obj):
        sd = obj
    else:
        keys = ", ".join(map(str, list(obj)[:10])) if isinstance(obj, dict) else type(obj).__name__
        raise CionError(f"{path}: no '{which}' state dict found (top-level: {keys}); expected the authors' "
                        "pre-training checkpoint or a backbone state dict")
    counts = {p: sum(k.startswith(p) for k in sd) for p in OFFICIAL_PREFIXES}
    prefix = max(OFFICIAL_PREFIXES, key=lambda p: (counts[p], len(p)))
    if counts[prefix] == 0:
        prefix = ""
    state = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    ignored = [k for k in sd if not k.startswith(prefix)]
    return state, prefix, ignored


# ------------------------------------------------------------------------------------- strict loading
def _strict_load(model: nn.Module, state: dict[str, torch.Tensor], mapping: dict[str, str], *,
                 arch: str, path: str) -> tuple[int, int, list[str]]:
    """Copy ``state`` (file keys) into ``model`` through ``mapping`` (file key -> model key), strictly.

    Returns (tensors loaded, derived buffers verified, position embeddings resampled). A
    ``pos_embed`` saved for another image size is resampled to the model's token grid. Raises
    :class:`CheckpointMismatchError` before touching the model if anything does not match.
    """
    targets = model.state_dict()
    derived = {n: b for n, b in model.named_buffers() if n not in targets}
    unmapped, unknown, shapes, dupes, derived_bad = [], [], [], [], []
    new, seen, verified, resampled = {}, {}, 0, []
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    for key, value in state.items():
        dest = mapping.get(key)
        if dest is None:
            unmapped.append(key)
        elif dest in targets:
            if dest in seen:
                dupes.append(f"{key} and {seen[dest]} -> {dest}")
            elif tuple(value.shape) != tuple(targets[dest].shape) and dest.endswith("pos_embed") and \
                    (resized := _resample_pos_embed(value, targets[dest], grid)) is not None:
                new[dest] = resized           # built for another image size: same key, other token grid
                resampled.append(f"{dest} {list(value.shape)} -> {list(resized.shape)}")
            elif tuple(value.shape) != tuple(targets[dest].shape):
                shapes.append(f"{key} -> {dest}: file {list(value.shape)} vs model {list(targets[dest].shape)}")
            else:
                new[dest] = value
            seen[dest] = key
        elif dest in derived and dest.endswith(DERIVED_BUFFER_SUFFIXES):
            ref = derived[dest]
            if tuple(value.shape) != tuple(ref.shape) or not torch.equal(value.to(ref.dtype), ref):
                derived_bad.append(f"{key}: {list(value.shape)} differs from the model's {list(ref.shape)} "
                                   "index (built with another window size?)")
            else:
                verified += 1
        else:
            unknown.append(f"{key} -> {dest}" if dest != key else key)
    missing = [k for k in targets if k not in seen]
    sections = [(t, items) for t, items in (
        ("file keys with no rule to a model key", unmapped),
        ("file keys with no such parameter/buffer in the model", unknown),
        ("shape mismatches", shapes), ("several file keys for one model key", dupes),
        ("derived buffers that differ", derived_bad), ("model keys missing from the file", missing)) if items]
    if sections:
        body = "\n".join(_listing(t, items) for t, items in sections)
        raise CheckpointMismatchError(
            f"{path} does not match {arch} (nothing was loaded):\n{body}\n"
            f"  Check --arch/name: `cion zoo info {arch}` shows the expected layout.")
    model.load_state_dict(new, strict=True)
    return len(new), verified, resampled


def _resample_pos_embed(value: torch.Tensor, target: torch.Tensor, grid=None) -> Optional[torch.Tensor]:
    """Bicubic resampling of a position embedding to the model's token grid, or None if impossible.

    ViT: (1, 1 + h*w, C) with a class token; ``grid`` is the model's (h, w) token grid and the file's
    grid is taken to have the same aspect ratio (16x8 for the authors' 256x128 checkpoints).
    VOLO: (1, h, w, C). The embedding width C must agree.
    """
    import math

    import torch.nn.functional as F

    if value.shape[-1] != target.shape[-1] or value.ndim != target.ndim:
        return None
    if value.ndim == 4:                                          # VOLO (1, h, w, C)
        grid = value.permute(0, 3, 1, 2).float()
        out = F.interpolate(grid, size=tuple(target.shape[1:3]), mode="bicubic", align_corners=False)
        return out.permute(0, 2, 3, 1).to(target.dtype)
    if value.ndim != 3:
        return None
    if grid is None or target.shape[1] - 1 != grid[0] * grid[1]:
        return None
    gh, gw = grid
    n_old = value.shape[1] - 1
    gw_old = max(1, round(math.sqrt(n_old * gw / gh)))        # same aspect ratio as the model grid
    gh_old = n_old // gw_old
    if gh_old * gw_old != n_old:
        return None
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(value.float(), new_size=[gh, gw], old_size=[gh_old, gw_old],
                                  num_prefix_tokens=1).to(target.dtype)


def load_official_checkpoint(model: nn.Module, path: PathLike, arch: str, which: str = "teacher") -> LoadReport:
    """Load the backbone of an authors' ``.pth`` (``teacher`` by default) into ``model``, strictly."""
    entry = get_entry(arch)
    obj = read_torch_checkpoint(path)
    state, prefix, ignored = extract_official_backbone(obj, path, which)
    if not state:
        raise CionError(f"{path}: '{which}' holds no backbone keys (expected prefix "
                        f"'{entry.teacher_prefix}')")
    mapping = official_to_ours(entry.family, state)
    loaded, verified, resampled = _strict_load(model, state, mapping, arch=arch, path=str(path))
    meta = {"epoch": obj.get("epoch")} if isinstance(obj, dict) else {}
    meta["resampled"] = resampled
    if isinstance(obj, dict) and isinstance(obj.get("args"), argparse.Namespace):
        meta["args_arch"] = getattr(obj["args"], "arch", None)
    return LoadReport(str(path), arch, "authors' pth", prefix, loaded, verified, ignored, meta)


def save_backbone(model: nn.Module, path: PathLike, metadata: Optional[dict] = None) -> Path:
    """Write ``model.state_dict()`` as a safetensors backbone file (atomically); return its path.

    The one writer of backbone files (pre-training's teacher, fine-tuning, ``cion zoo convert``).
    Metadata: ``format``, ``arch`` (``metadata['arch']``, else the ``zoo_name`` that
    :func:`cion.models.create_model` set), ``feature_dim``, ``reparameterized``, then every entry
    of ``metadata`` (strings as they are, other values as JSON).
    """
    from safetensors.torch import save_file

    metadata = dict(metadata or {})
    arch = metadata.pop("arch", None) or getattr(model, "zoo_name", None)
    if arch is None:
        raise ValueError("save_backbone needs metadata={'arch': ...} for a model not made by create_model")
    dim = getattr(model, "feature_dim", None) or get_entry(arch).feature_dim
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": BACKBONE_FORMAT, "arch": str(arch), "feature_dim": str(int(dim)),
            "reparameterized": str(bool(getattr(model, "reparameterized", False))).lower()}
    meta.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_backbone_file(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; clear error when it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CionError(f"backbone file {path} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as err:
        raise CionError(f"cannot read {path} as safetensors ({err})") from None


def load_backbone_file(model: nn.Module, path: PathLike, arch: str) -> LoadReport:
    """Load our safetensors backbone file into ``model`` (strict, names must be ours)."""
    tensors, meta = read_backbone_file(path)
    file_arch = meta.get("arch")
    if file_arch is not None and canonical_name(file_arch) != canonical_name(arch):
        raise CionError(f"{path} holds a '{file_arch}' backbone, not '{arch}'; "
                        f"use create_model('{file_arch}', checkpoint=...)")
    if meta.get("reparameterized") == "true" and not getattr(model, "reparameterized", False):
        raise CionError(f"{path} holds re-parameterised (inference-only) weights; load the training-form "
                        "file and call cion.models.reparameterize() after loading instead")
    loaded, verified, resampled = _strict_load(model, tensors, {k: k for k in tensors}, arch=arch, path=str(path))
    return LoadReport(str(path), arch, "safetensors", "", loaded, verified, [], dict(meta, resampled=resampled))


def load_checkpoint(model: nn.Module, path: PathLike, arch: str, which: str = "teacher") -> LoadReport:
    """Dispatch on the file's content: safetensors -> :func:`load_backbone_file`, else the authors' ``.pth``."""
    path = Path(path)
    if not path.is_file():
        raise CionError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return load_backbone_file(model, path, arch)
    return load_official_checkpoint(model, path, arch, which)


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors starts with a little-endian u64 header length followed by a JSON object."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and int.from_bytes(head[:8], "little") < 100_000_000 and head[8:9] == b"{"
