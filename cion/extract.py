"""Batched feature extraction: images -> L2-normalised features (.npy) in manifest row order.

>>> from cion.extract import load_model, extract_features
>>> model = load_model("resnet50_ibn", checkpoint="backbone.safetensors")
>>> feats = extract_features(paths, model, out="feats.npy", flip=True)   # (N, D) float16

A model is any ``nn.Module`` mapping (B, 3, H, W) ImageNet-normalised images to (B, D), or the
hand-crafted ``colour-hist`` descriptor (:mod:`cion.handcrafted`, no network). Features are
written straight into a memory-mapped ``.npy`` (so millions of rows never sit in RAM twice),
and under ``torchrun`` every rank writes its own interleaved rows of the same file.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cion.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from cion.errors import CionError

COLOUR_HIST_NAMES = ("colour-hist", "color-hist", "colour_hist", "color_hist", "colour-histogram")
#: Image size of the colour-histogram descriptor unless the user sets one.
COLOUR_HIST_SIZE = (64, 32)


@dataclass
class FeatureModel:
    """What the extractor runs: a torch module or the colour-histogram descriptor."""
    name: str
    module: object | None          # nn.Module, or None for colour-hist
    img_size: tuple[int, int]      # (height, width)
    dim: int

    @property
    def is_network(self) -> bool:
        return self.module is not None


def load_model(spec: str, checkpoint: str | os.PathLike | None = None,
               img_size: tuple[int, int] | None = None, seed: int = 0) -> FeatureModel:
    """Resolve ``--model``: ``colour-hist``, a ReIDZoo name (with optional ``checkpoint``), or a
    path to one of our ``.safetensors`` backbone files (its architecture is in its metadata).

    Weights a checkpoint does not give are initialised from ``seed`` alone, so every process
    (DDP rank) builds the same network and a run without a checkpoint is reproducible."""
    from cion.distributed import same_init

    with same_init(seed):
        return _load_model(spec, checkpoint, img_size)


def _load_model(spec, checkpoint, img_size) -> FeatureModel:
    if spec.lower() in COLOUR_HIST_NAMES:
        from cion.handcrafted import colour_histogram

        size = tuple(img_size) if img_size else COLOUR_HIST_SIZE
        probe = colour_histogram(np.zeros((1, size[0], size[1], 3), np.uint8))
        return FeatureModel("colour-hist", None, size, probe.shape[1])
    size = tuple(img_size) if img_size else (256, 128)
    from cion.models import create_model, list_models
    from cion.models.registry import canonical_name

    path = Path(spec)
    if canonical_name(spec) not in list_models(include_micro=True) and (path.suffix in (".safetensors", ".pth", ".pt") or path.exists()):
        if checkpoint is not None:
            raise CionError(f"--model {spec} is a file; give either --model NAME --checkpoint FILE "
                            "or --model FILE.safetensors")
        if path.suffix != ".safetensors":
            raise CionError(f"--model {spec}: a .pth/.pt checkpoint does not say its architecture; "
                            f"use --model NAME --checkpoint {spec} (NAME from `cion zoo list`)")
        from cion.models.checkpoint import read_backbone_file

        _, meta = read_backbone_file(path)
        arch = meta.get("arch")
        if arch is None:
            raise CionError(f"{path} has no 'arch' metadata; use --model NAME --checkpoint {path}")
        spec, checkpoint = arch, path
    if canonical_name(spec) not in list_models(include_micro=True):
        raise CionError(f"unknown model '{spec}': use colour-hist, a ReIDZoo name "
                        f"({', '.join(list_models()[:4])}, ...; see `cion zoo list`) or a "
                        ".safetensors backbone file")
    module = create_model(spec, checkpoint=checkpoint, img_size=size).eval()
    return FeatureModel(spec if checkpoint is None else f"{spec}:{Path(checkpoint).name}", module,
                        size, int(module.feature_dim))


class _Images:
    """Map-style dataset: path -> ``(x, i, reason)``: x (3, H, W) float tensor, ImageNet-
    normalised; ``reason`` is "" or, for an unreadable file (x then zeros), why it failed."""

    def __init__(self, paths: Sequence[str], size: tuple[int, int]):
        self.paths = list(paths)
        self.size = size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import torch
        from PIL import Image

        from cion.data.images import BadImageError, read_rgb

        try:
            img = read_rgb(self.paths[i]).resize((self.size[1], self.size[0]), Image.BILINEAR)
        except BadImageError as err:
            return torch.zeros(3, *self.size), i, err.reason
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div_(255)
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        std = torch.tensor(IMAGENET_STD)[:, None, None]
        return (x - mean) / std, i, ""


def _check_paths(paths: Sequence[str], tolerated: float = 0.0) -> None:
    """Fail early when more than ``tolerated`` of the first 2000 files are missing (a wrong
    dataset root rather than a few lost files)."""
    sample = paths[:2000]
    missing = [p for p in sample if not os.path.exists(p)]
    if len(missing) > tolerated * len(sample):
        raise CionError(f"{len(missing)} image file(s) do not exist, e.g. {missing[:2]}. Fix: check "
                        "the dataset root / manifest (relative paths are relative to the manifest)")


def _colour_hist_batch(paths: Sequence[str], size, bad) -> tuple[np.ndarray, list[int]]:
    """Colour histograms of ``paths`` (rows of unreadable files: zeros) and those rows."""
    from PIL import Image

    from cion.data.images import BadImageError, read_rgb
    from cion.handcrafted import colour_histogram

    h, w = size
    imgs = np.zeros((len(paths), h, w, 3), dtype=np.uint8)
    failed = []
    for k, p in enumerate(paths):                    # decoding is per file by nature
        try:
            imgs[k] = np.asarray(read_rgb(p).resize((w, h), Image.BILINEAR))
        except BadImageError as err:
            if bad is None:
                raise
            failed.append((k, err.reason))
    f = colour_histogram(imgs)
    for k, _ in failed:
        f[k] = 0.0
    return f, failed


def extract_features(paths: Sequence[str], model: FeatureModel, *, out: str | os.PathLike | None = None,
                     batch_size: int = 64, flip: bool = False, dtype: str = "float16",
                     device: str | None = None, workers: int = 0, progress: bool = True,
                     bad_images=None) -> np.ndarray:
    """Features of ``paths`` in order: (N, D) L2-normalised, ``dtype`` float16 or float32.

    Args:
        paths: image files (absolute, or relative to the working directory).
        model: from :func:`load_model`.
        out: ``.npy`` file to write (memory-mapped as it fills); None keeps them in memory.
        flip: average the features of the image and its horizontal mirror (then L2-normalise).
        device: ``cuda``/``cpu``; default CUDA when available.
        workers: DataLoader worker processes decoding images.
        bad_images: None: an unreadable image stops the run (:class:`~cion.data.images.
            BadImageError` naming it). Or a :class:`~cion.data.images.BadImageTally`: such an
            image gets a row of zeros, is added to the tally (which stops the run past its
            share) and its row to ``bad_images.rows`` ({row: reason}, all ranks' rows).

    Under ``torchrun`` (``torch.distributed`` initialised) rank r extracts rows r, r + W, ... and
    writes them into the shared ``out`` file (required then), created by rank 0.
    """
    import torch

    from cion import distributed as dist

    if dtype not in ("float16", "float32"):
        raise CionError(f"--dtype must be float16 or float32 (got {dtype})")
    paths = [str(p) for p in paths]
    if not paths:
        raise CionError("no images to extract features from")
    _check_paths(paths, 0.0 if bad_images is None else bad_images.max_share)
    n, dim = len(paths), model.dim
    world, rank = (dist.world_size(), dist.rank()) if dist.is_dist() else (1, 0)
    if world > 1 and out is None:
        raise CionError("distributed extraction needs out= (a file all ranks write into)")
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            np.lib.format.open_memmap(out, mode="w+", dtype=dtype, shape=(n, dim)).flush()
        if world > 1:
            dist.barrier()
        feats = np.load(out, mmap_mode="r+")
    else:
        feats = np.empty((n, dim), dtype=dtype)
    mine = np.arange(rank, n, world)

    def record(row: int, reason: str) -> None:
        if bad_images is None:
            from cion.data.images import BadImageError
            raise BadImageError(paths[row], reason)
        bad_images.rows[int(row)] = reason
        bad_images.check(bad_images.add(paths[row], reason))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("extract {task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, disable=not progress or rank != 0, transient=True) as bar:
        task = bar.add_task(model.name, total=len(mine))
        if not model.is_network:
            for s in range(0, len(mine), max(batch_size, 256)):
                rows = mine[s:s + max(batch_size, 256)]
                f, failed = _colour_hist_batch([paths[i] for i in rows], model.img_size, bad_images)
                feats[rows] = f.astype(dtype)   # already L2-normalised; flipping changes nothing
                for k, reason in failed:
                    record(rows[k], reason)
                bar.advance(task, len(rows))
        else:
            dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            net = model.module.to(dev).eval()
            subset = torch.utils.data.Subset(_Images(paths, model.img_size), mine.tolist())
            loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=workers,
                                                 pin_memory=dev.type == "cuda")
            amp = torch.autocast(dev.type, dtype=torch.float16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
            with torch.inference_mode(), amp:
                for x, idx, reasons in loader:
                    x = x.to(dev, non_blocking=True)
                    f = net(x).float()
                    if flip:
                        f = f + net(torch.flip(x, dims=[3])).float()
                    f = torch.nn.functional.normalize(f, dim=1)
                    failed = [k for k, r in enumerate(reasons) if r]
                    f = f.cpu().numpy()
                    f[failed] = 0
                    nan = np.flatnonzero(~np.isfinite(f).all(axis=1))
                    if len(nan):
                        raise CionError(
                            f"{model.name} gave NaN/inf features for {len(nan)} image(s) of a "
                            f"batch, e.g. {paths[int(idx[nan[0]])]}. Fix: check the weights "
                            "(--checkpoint), or extract in float32 on this device")
                    f = f.astype(dtype)
                    feats[idx.numpy()] = f
                    for k in failed:
                        record(int(idx[k]), reasons[k])
                    bar.advance(task, len(idx))
    if bad_images is not None and world > 1:          # every rank learns every bad row
        for part in dist.all_gather_object(dict(bad_images.rows)):
            bad_images.rows.update(part)
    if out is not None:
        feats.flush()
        if world > 1:
            dist.barrier()
        return np.load(out, mmap_mode="r")
    return feats


def load_data(data: str | os.PathLike) -> pd.DataFrame:
    """``--data``: a manifest (.parquet), a table (.csv), a CION-AL json, or a directory (Market /
    MSMT17 layout -> all splits with a ``split`` column; ``query/`` + ``gallery/`` folders;
    ``<identity>/<image>`` folders; or any folder of images, identities unknown)."""
    from cion.data import readers
    from cion.data.manifest import read_manifest, validate

    data = Path(data)
    if data.is_file():
        suffix = data.suffix.lower()
        if suffix in (".parquet", ".pq"):
            try:
                return read_manifest(data)
            except CionError:
                return readers.read_table(data)
        if suffix == ".csv":
            return readers.read_table(data)
        if suffix == ".json":
            return readers.read_cion_json(data)
        raise CionError(f"--data {data}: expected a .parquet manifest, a .csv table, a .json "
                        "annotation file or a directory of images")
    if not data.is_dir():
        raise CionError(f"--data {data}: no such file or directory")
    ds = None
    if all((data / d).is_dir() for d in readers.MARKET_DIRS):
        ds = readers.read_market1501(data)
    elif any((data / tr).is_dir() for tr, _ in readers.MSMT_VERSIONS.values()) and (data / "list_query.txt").exists():
        ds = readers.read_msmt17(data)
    elif (data / "query").is_dir() and (data / "gallery").is_dir():
        ds = readers.read_folder_dataset(data)
    if ds is not None:
        parts = [(s, df) for s, df in (("train", ds.train), ("query", ds.query), ("gallery", ds.gallery))
                 if df is not None]
        df = pd.concat([p.assign(split=s) for s, p in parts], ignore_index=True)
        df["tracklet"] = np.arange(len(df), dtype=np.int64)
        df = validate(df, str(data))
        df.attrs["root"] = str(data)
        return df
    subdirs = [p for p in data.iterdir() if p.is_dir()]
    loose = [p for p in data.iterdir() if p.is_file() and p.suffix.lower() in readers.IMAGE_SUFFIXES]
    if subdirs and not loose:
        return readers.read_identity_folders(data)
    files = sorted(str(p.relative_to(data)) for p in data.rglob("*")
                   if p.is_file() and p.suffix.lower() in readers.IMAGE_SUFFIXES)
    if not files:
        raise CionError(f"--data {data}: no images ({', '.join(readers.IMAGE_SUFFIXES)}) found")
    df = validate(pd.DataFrame({"path": files, "video": [os.path.dirname(f) for f in files],
                                "tracklet": np.arange(len(files), dtype=np.int64), "frame": -1,
                                "camera": -1, "identity": -1}), str(data))
    df.attrs["root"] = str(data)
    return df


def manifest_path_for(features: str | os.PathLike) -> Path:
    """``F.npy`` -> ``F.manifest.parquet`` (written beside the features)."""
    f = Path(features)
    return f.with_name(f.stem + ".manifest.parquet")


def bad_list_path_for(features: str | os.PathLike) -> Path:
    """``F.npy`` -> ``F.bad_images.txt`` (the unreadable images an extraction skipped)."""
    f = Path(features)
    return f.with_name(f.stem + ".bad_images.txt")


def _copy_rows(src: np.ndarray, keep: np.ndarray, path: Path, block: int = 65536) -> None:
    """Write rows ``keep`` of ``src`` to the .npy ``path`` block by block (bounded memory)."""
    dst = np.lib.format.open_memmap(path, mode="w+", dtype=src.dtype, shape=(len(keep), src.shape[1]))
    for a in range(0, len(keep), block):
        dst[a:a + block] = src[keep[a:a + block]]
    dst.flush()
    del dst


def extract_to_files(data: str | os.PathLike, model_spec: str, out: str | os.PathLike, *,
                     checkpoint=None, img_size=None, batch_size: int = 64, flip: bool = False,
                     dtype: str = "float16", device=None, workers: int = 0,
                     progress: bool = True, max_bad_share: float = 0.01) -> dict:
    """The ``cion extract`` command: features to ``out`` (.npy), the manifest beside it
    (``F.manifest.parquet``, same row order, absolute paths) and ``F.json`` describing the run.

    Unreadable images (corrupt, truncated, empty, missing) are left out of both and listed in
    ``F.bad_images.txt``; past ``max_bad_share`` of the images the run stops. The features are
    written to a temporary file renamed at the end, so a killed run leaves the previous ``out``
    intact (or none), never a half-written one.
    """
    from cion import distributed as dist
    from cion.data.images import BadImageTally
    from cion.data.manifest import resolve_paths, write_manifest
    from cion.fileio import atomic_write, ensure_writable_file

    out = Path(out)
    if out.suffix != ".npy":
        raise CionError(f"--out {out}: features are written as .npy (e.g. --out feats.npy)")
    ensure_writable_file(out)
    df = load_data(data)
    model = load_model(model_spec, checkpoint=checkpoint, img_size=img_size)
    paths = resolve_paths(df)
    if dist.launched_by_torchrun():                  # ranks split the rows (gloo on CPU)
        dist.init(device)
    main = not dist.is_dist() or dist.rank() == 0
    partial = out.with_name(f".{out.stem}.partial.npy")      # the same name on every rank
    bad = BadImageTally(len(paths), bad_list_path_for(out), max_share=max_bad_share,
                        what="extract", fresh=main)
    t0 = time.perf_counter()
    try:
        feats = extract_features(paths, model, out=partial, batch_size=batch_size, flip=flip,
                                 dtype=dtype, device=device, workers=workers, progress=progress,
                                 bad_images=bad)
    except BaseException:
        if main and partial.exists():
            partial.unlink()
        raise
    seconds = time.perf_counter() - t0
    if dist.is_dist():
        dist.barrier()                               # every rank holds its map before renaming
    keep = np.setdiff1d(np.arange(len(df)), np.fromiter(bad.rows, dtype=np.int64, count=len(bad.rows)))
    info = {"features": str(out), "manifest": str(manifest_path_for(out)), "rows": int(len(keep)),
            "dim": int(feats.shape[1]), "dtype": dtype, "model": model.name,
            "img_size": list(model.img_size), "flip": bool(flip), "seconds": round(seconds, 3),
            "images_per_second": round(len(df) / max(seconds, 1e-9), 1), "data": str(data),
            "bad_images": len(bad.rows), "rank": dist.rank(),
            "bad_list": str(bad.list_path) if bad.rows else None}
    if main:
        m = df.copy()
        m["path"] = paths
        if bad.rows:                                 # skip them: features and manifest agree
            tmp = out.with_name(f".{out.stem}.compact.npy")
            _copy_rows(feats, keep, tmp)
            del feats
            os.replace(tmp, out)
            partial.unlink()
            m = m.iloc[keep].reset_index(drop=True)
        else:
            del feats
            os.replace(partial, out)
        write_manifest(m, manifest_path_for(out))
        atomic_write(out.with_suffix(".json"),
                     lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))
    if dist.is_dist():
        dist.barrier()
    return info
