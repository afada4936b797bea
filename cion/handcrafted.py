"""A hand-crafted ReID descriptor: colour histograms of horizontal stripes.

No network, no training: a baseline that any learned feature should beat, and a cheap extractor
for the synthetic world (tests, denoising experiments). Images are resized to a fixed size, the
central columns are kept (the person; the sides are mostly background), each colour channel is
divided by its mean over the crop (grey-world white balance: cancels a camera's illumination and
colour cast), the crop is cut into ``stripes`` horizontal bands (head, torso, legs, ...), and
each band gets a joint RGB histogram with ``bins`` levels per channel. Histograms are square-rooted (Hellinger kernel) and
the concatenation is L2-normalised, so the dot product of two descriptors is a cosine similarity.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np
from PIL import Image


def colour_histogram(images: np.ndarray, stripes: int = 6, bins: int = 4, centre: float = 0.5,
                     grey_world: bool = True) -> np.ndarray:
    """Stripe colour histograms of a batch of images.

    Args:
        images: (N, H, W, 3) uint8 RGB images of one size.
        stripes: horizontal bands (H should be divisible by it; the remainder rows are ignored).
        bins: levels per colour channel (joint histogram of ``bins**3`` cells per band).
        centre: share of the width kept, centred (1.0 keeps everything).
        grey_world: normalise each channel to a mean of 110 over the kept crop.

    Returns:
        (N, stripes * bins**3) float32, L2-normalised rows.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
    n, h, w, _ = images.shape
    keep = max(1, int(round(w * centre)))
    left = (w - keep) // 2
    rows = h - h % stripes
    crop = images[:, :rows, left:left + keep].astype(np.float32)              # (N, rows, keep, 3)
    if grey_world:
        crop *= 110.0 / crop.mean(axis=(1, 2), keepdims=True).clip(min=1.0)
    q = (np.clip(crop, 0, 255).astype(np.int32) * bins) >> 8                  # (N, rows, keep, 3)
    cell = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]                  # (N, rows, W)
    band = (np.arange(rows) // (rows // stripes))[None, :, None]              # (1, rows, 1)
    cells = bins ** 3
    flat = (np.arange(n)[:, None, None] * stripes + band) * cells + cell
    hist = np.bincount(flat.ravel(), minlength=n * stripes * cells).reshape(n, stripes * cells)
    feats = np.sqrt(hist.astype(np.float32))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True).clip(min=1e-12)
    return feats


def load_images(paths: Sequence[str | os.PathLike], size: tuple[int, int] = (64, 32)) -> np.ndarray:
    """Read images as (N, height, width, 3) uint8 RGB, resized (bilinear) to ``size`` =
    (height, width), as :func:`cion.evaluation.retrieval.embed_paths` does. An unreadable
    file raises :class:`~cion.errors.CionError` naming it."""
    from cion.errors import CionError

    h, w = size
    out = np.empty((len(paths), h, w, 3), dtype=np.uint8)
    for i, p in enumerate(paths):  # decoding is per file by nature
        try:
            with Image.open(p) as img:
                out[i] = np.asarray(img.convert("RGB").resize((w, h), Image.BILINEAR))
        except OSError as err:
            raise CionError(f"{p}: cannot read this image ({err}). Fix: remove it from the "
                            "list or replace the file") from None
    return out


def colour_histogram_files(paths: Iterable[str | os.PathLike], size: tuple[int, int] = (64, 32),
                           stripes: int = 6, bins: int = 4, batch: int = 1024) -> np.ndarray:
    """:func:`colour_histogram` of image files, in batches. Returns (N, stripes * bins**3) float32."""
    paths = list(paths)
    parts = [colour_histogram(load_images(paths[i:i + batch], size), stripes, bins)
             for i in range(0, len(paths), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, stripes * bins ** 3), np.float32)
