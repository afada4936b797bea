"""Choosing sigma_cst / sigma_drm for a feature extractor other than the paper's.

The paper's thresholds (0.2 / 0.18) were set for a ReID-trained ViT-B whose cosine distances
between images of one person are small. Other features (a colour histogram, an ImageNet model,
a small zoo model) live on another distance scale, and the paper's values can then exclude
everything or nothing. :func:`calibrate_thresholds` reads the scale off the data itself:

* ``sigma_cst`` = the ``quantile`` of the leave-one-out deviations ``d(x, c(t \\ x))`` of all
  members of all raw tracklets (most tracklet members are the tracked person, so a high quantile
  bounds the spread of one person and leaves the outliers above it);
* ``sigma_drm = ratio * sigma_cst`` (the paper's ratio 0.18 / 0.2 = 0.9 by default).

It is an explicit, recorded choice (``cion denoise --calibrate Q`` writes the values used into
``OUT.stats.json``), never applied silently.
"""
from __future__ import annotations

import numpy as np

from cion.denoise.features import FeatureSource, open_features


def calibrate_thresholds(features, video, tracklet, *, quantile: float = 0.9,
                         ratio: float = 0.9, block_rows: int = 32768) -> dict:
    """Thresholds from a quantile of within-tracklet leave-one-out deviations.

    Args:
        features: (N, D) array or ``.npy`` path; video, tracklet: (N,) as for ``denoise``.
        quantile: in (0, 1); higher keeps more images (excludes only the farthest outliers).
        ratio: ``sigma_drm / sigma_cst``.

    Returns:
        ``{"sigma_cst", "sigma_drm", "quantile", "ratio", "members"}``.
    """
    from cion.errors import CionError
    from cion.denoise.pipeline import _layout, read_tracklet_sums
    from cion.denoise.tracklet import loo_deviation

    if not 0.0 < quantile < 1.0:
        raise CionError(f"calibration quantile {quantile} must lie strictly between 0 and 1")
    src = FeatureSource(open_features(features))
    order, tid_pos, tstart, _, _ = _layout(video, tracklet, src.n)
    S, p, q = read_tracklet_sums(src, order, tstart, block_rows)
    cnt = np.diff(tstart).astype(np.float64)
    SS = np.einsum("ij,ij->i", S, S)
    use = cnt[tid_pos] >= 2
    if not use.any():
        raise CionError("cannot calibrate: no tracklet has two or more images")
    t = tid_pos[use]
    dev = loo_deviation(p[use], q[use], SS[t], cnt[t])
    sigma_cst = float(np.quantile(dev, quantile))
    sigma_cst = min(max(sigma_cst, 1e-6), 2.0)
    return {"sigma_cst": sigma_cst, "sigma_drm": float(ratio * sigma_cst),
            "quantile": float(quantile), "ratio": float(ratio), "members": int(use.sum())}
