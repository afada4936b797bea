"""A tiny labelled image set for tests, benchmarks and smoke runs (no synthetic world needed).

Each identity is a person-shaped figure with its own colours for head, torso and legs over a
noisy background; images of one identity differ by position, scale and noise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_toy_manifest(out_dir: str | Path, identities: int = 8, images_per_identity: int = 6,
                      size: tuple[int, int] = (64, 32), seed: int = 0, fmt: str = "png"):
    """Write ``identities * images_per_identity`` images of (H, W) ``size`` and a manifest.

    Returns the validated manifest DataFrame (``attrs['root']`` = ``out_dir``); also written
    to ``out_dir/manifest.parquet``.
    """
    from cion.data.manifest import new_manifest, write_manifest

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    palette = rng.integers(0, 256, (identities, 3, 3))
    paths, video, tracklet, identity = [], [], [], []
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(identities):          # a handful of tiny images: a loop is clearest here
        for j in range(images_per_identity):
            img = rng.integers(0, 80, (h, w, 3)).astype(np.float64)
            cx = w / 2 + rng.uniform(-0.1, 0.1) * w
            s = rng.uniform(0.85, 1.0)
            top = rng.uniform(0.02, 0.08) * h
            parts = [(top, top + 0.2 * h * s, 0.15), (top + 0.2 * h * s, top + 0.55 * h * s, 0.3),
                     (top + 0.55 * h * s, top + 0.95 * h * s, 0.2)]
            for (y0, y1, half), colour in zip(parts, palette[i]):
                mask = (yy >= y0) & (yy < y1) & (np.abs(xx - cx) < half * w * s)
                img[mask] = colour + rng.normal(0, 12, 3)
            name = f"images/{i:03d}_{j:02d}.{fmt}"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out / name)
            paths.append(name)
            video.append(f"v{i % 3}")
            tracklet.append(i * images_per_identity + j)
            identity.append(i)
    df = new_manifest(path=paths, video=video, tracklet=tracklet, identity=identity)
    write_manifest(df, out / "manifest.parquet")
    df.attrs["root"] = str(out.resolve())
    return df
