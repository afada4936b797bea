"""Choosing sigma_cst / sigma_drm for a feature extractor other than the paper's.

The paper's thresholds (0.2 / 0.18) were set for a ReID-trained ViT-B whose cosine distances
between images of one person are small and between different people large. Other features (a
colour histogram, an ImageNet model, a small zoo model) live on another distance scale, and the
paper's values can then exclude everything or chain all tracklets into a few giant identities.
:func:`calibrate_thresholds` reads the scale off the data itself:

* ``sigma_cst`` = the ``quantile`` of the leave-one-out deviations ``d(x, c(t \\ x))`` of all
  members of all raw tracklets. Most members are the tracked person, so a quantile a little below
  ``1 - (expected share of noisy images)`` bounds the spread of one person and leaves the
  outliers above it (default 0.8, i.e. up to ~20% of images may be excluded at level 1).
* ``sigma_drm`` = the distance below which a random pair of tracklets *from different videos*
  (almost always two different people) falls with probability
  ``p = false_links / min(2 r_s, T - 1)``. Each tracklet meets ``2 r_s`` others in the sliding
  range (all ``T - 1`` others when there are fewer tracklets), so this bounds the expected number
  of false links per tracklet by ``false_links`` (default 0.1), well below 1, where the
  transitive closure would start to chain everything into one component (percolation).

The bound is tight when a random cross-video pair is almost never one person (a large crawl:
millions of tracklets, each person in a few videos). In a small, dense collection (a campus
filmed by a few cameras, the demo's 60 people in 16 videos: 1.6% of cross-video tracklet pairs
are one person) the low tail of the pair distances is mostly *true* links, so the threshold comes
out stricter than the budget says and cross-video recall suffers; raise ``false_links`` there
(the demo uses 1.0 and reports the precision it reaches).

It is an explicit, recorded choice (``cion denoise --calibrate Q`` writes the values used into
``OUT.stats.json``), never applied silently.
"""
from __future__ import annotations

import numpy as np

from cion.denoise.features import prepare_features


def calibrate_thresholds(features, video, tracklet, *, quantile: float = 0.8,
                         false_links: float = 0.1, range_half_width: int = 1000,
                         max_pairs: int = 4_000_000, seed: int = 0,
                         block_rows: int = 2048, centre=None, whiten: int | None = None) -> dict:
    """Thresholds from the features' own distances (see the module docstring).

    Args:
        features: (N, D) array or ``.npy`` path, or a prepared source, as for ``denoise``;
            video, tracklet: (N,) as for ``denoise``.
        quantile: in (0, 1), quantile of within-tracklet leave-one-out deviations -> sigma_cst.
        false_links: expected false links per tracklet allowed -> sigma_drm.
        range_half_width: the ``r_s`` the thresholds are meant for.
        max_pairs: cross-video tracklet pairs sampled (all pairs when there are fewer).
        centre: None or (N,) groups, whiten: None or dimensions, as for
            :func:`~cion.denoise.denoise` (use the same there).

    Returns:
        ``{"sigma_cst", "sigma_drm", "quantile", "false_links", "link_probability",
        "members", "pairs"}``.
    """
    from cion.errors import CionError
    from cion.denoise.pipeline import _layout, read_tracklet_sums
    from cion.denoise.segments import unit_rows
    from cion.denoise.tracklet import loo_deviation

    if not 0.0 < quantile < 1.0:
        raise CionError(f"calibration quantile {quantile} must lie strictly between 0 and 1")
    if false_links <= 0:
        raise CionError(f"false_links {false_links} must be > 0")
    src = prepare_features(features, centre=centre, whiten=whiten)
    order, tid_pos, tstart, tvideo, _ = _layout(video, tracklet, src.n)
    S, p, q = read_tracklet_sums(src, order, tstart, block_rows)
    cnt = np.diff(tstart).astype(np.float64)
    SS = np.einsum("ij,ij->i", S, S)
    use = cnt[tid_pos] >= 2
    if not use.any():
        raise CionError("cannot calibrate: no tracklet has two or more images")
    t = tid_pos[use]
    dev = loo_deviation(p[use], q[use], SS[t], cnt[t])
    sigma_cst = min(max(float(np.quantile(dev, quantile)), 1e-6), 2.0)

    U = unit_rows(S, cnt)
    T = len(U)
    rng = np.random.default_rng(seed)
    if T * (T - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(T, 1)
    else:
        i, j = rng.integers(0, T, max_pairs), rng.integers(0, T, max_pairs)
    keep = tvideo[i] != tvideo[j]
    i, j = i[keep], j[keep]
    if len(i) == 0:
        raise CionError("cannot calibrate sigma_drm: all tracklets are in one video")
    d = np.concatenate([1.0 - np.einsum("ij,ij->i", U[i[a:a + 65536]], U[j[a:a + 65536]])
                        for a in range(0, len(i), 65536)])
    # each tracklet meets 2 r_s others in the sliding range, or all T - 1 when there are fewer
    neighbours = max(1, min(2 * int(range_half_width), T - 1))
    link_p = min(0.5, false_links / neighbours)
    sigma_drm = min(max(float(np.quantile(d, link_p)), 1e-6), 2.0)
    return {"sigma_cst": sigma_cst, "sigma_drm": sigma_drm, "quantile": float(quantile),
            "false_links": float(false_links), "link_probability": link_p,
            "members": int(use.sum()), "pairs": int(len(i)), "centred": src.centred,
            "whitened": src.whitened}
