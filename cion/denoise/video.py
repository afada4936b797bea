"""Level 2, single-video denoising: reallocation (paper Eq. 5) and merging (Eq. 6).

Both steps only compare things inside one video. Videos are grouped by size and handled as
padded batched matrix products (``(G, q, D) @ (G, D, k)``), float64, so the cost is the sum of
the per-video products and there is no Python loop over samples or pairs.
"""
from __future__ import annotations

import numpy as np

from cion.denoise.reference import TIE_EPS
from cion.denoise.segments import padded_batches, padded_index


def reallocate(Xe: np.ndarray, e_track: np.ndarray, e_video: np.ndarray, U1: np.ndarray,
               key: np.ndarray, vtstart: np.ndarray, sigma_cst: float) -> np.ndarray:
    """Eq. 5 with the fixed level-1 centroids.

    Args:
        Xe: (E, D) normalised features of the excluded samples.
        e_track: (E,) the tracklet each was excluded from; e_video: (E,) its video.
        U1: (T, D) unit level-1 centroids (zero rows for zero centroids).
        key: (T,) first manifest row of each level-1 tracklet (tie-break: earliest).
        vtstart: (V+1,) tracklets of video v are ``vtstart[v]:vtstart[v+1]``.
        sigma_cst: a sample is reallocated only if its distance is ``< sigma_cst``.

    Returns:
        (E,) int64 target tracklet, -1 where the sample is discarded.
    """
    E = len(e_track)
    target = np.full(E, -1, dtype=np.int64)
    if E == 0:
        return target
    o = np.argsort(e_video, kind="stable")
    V = len(vtstart) - 1
    estart = np.searchsorted(e_video[o], np.arange(V + 1))
    nq = np.diff(estart)
    nk = np.diff(vtstart)
    nk_use = np.where(nk >= 2, nk, 0)                # a lone tracklet has nobody to give to
    big = np.iinfo(np.int64).max
    for segs, q0, mq, mk in padded_batches(nq, nk_use):
        qi, qv = padded_index(estart, segs, q0, mq)  # (G, mq) positions in o
        ki, kv = padded_index(vtstart, segs, 0, mk)  # (G, mk) tracklet ids
        ee = o[qi]
        sims = np.matmul(Xe[ee], U1[ki].transpose(0, 2, 1))
        d = 1.0 - sims
        bad = ~kv[:, None, :] | (ki[:, None, :] == e_track[ee][:, :, None])
        d[bad] = np.inf
        best = d.min(axis=2, keepdims=True)
        tied = (d <= best + TIE_EPS) & ~bad
        pick = np.where(tied, key[ki][:, None, :], big).argmin(axis=2)      # (G, mq)
        dist = np.take_along_axis(d, pick[..., None], axis=2)[..., 0]
        tgt = np.take_along_axis(np.broadcast_to(ki[:, None, :], d.shape), pick[..., None],
                                 axis=2)[..., 0]
        ok = qv & (dist < sigma_cst)
        target[ee[ok]] = tgt[ok]
    return target


def merge_pairs(U2: np.ndarray, vtstart: np.ndarray, sigma_drm: float):
    """Eq. 6: all pairs of tracklets of one video with ``1 - cos < sigma_drm``.

    Args:
        U2: (T, D) unit level-2 centroids (after reallocation), float64.
        vtstart: (V+1,) video segments over tracklets.

    Returns:
        ``(i, j)`` int64 arrays of linked tracklet pairs (i < j).
    """
    nk = np.diff(vtstart)
    n2 = np.where(nk >= 2, nk, 0)
    out_i, out_j = [], []
    for segs, q0, mq, mk in padded_batches(n2, n2):
        qi, qv = padded_index(vtstart, segs, q0, mq)
        ki, kv = padded_index(vtstart, segs, 0, mk)
        d = 1.0 - np.matmul(U2[qi], U2[ki].transpose(0, 2, 1))
        upper = (q0 + np.arange(mq))[:, None] < np.arange(mk)[None, :]
        hit = (d < sigma_drm) & upper[None] & qv[:, :, None] & kv[:, None, :]
        g, a, b = np.nonzero(hit)
        out_i.append(qi[g, a])
        out_j.append(ki[g, b])
    if not out_i:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(out_i), np.concatenate(out_j)
