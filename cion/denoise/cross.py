"""Level 3, long-range cross-video denoising (paper Eq. 7): sliding range + linking relations.

The groups of level 2 form one ultra-long sequence ``t_1..t_N``. Every pair with
``0 < c - i <= r_s`` and ``1 - cos(c_i, c_c) < sigma_drm`` is a linking relation. The band is
computed block by block as float32 matrix products ``U[i:i+B] @ U[i+1:i+B+r_s].T`` (cost
``O(N * r_s * D)``); pairs within ``_MARGIN`` of the threshold in float32 are re-decided in float64
so the links are those of the exact float64 rule.

Option (not in the paper, off by default): ``order="coarse"`` slides over the sequence sorted by a
coarse feature key (a k-means cell of the centroid, then the sequence position), so that similar
groups far apart in the sequence become neighbours; ``order="both"`` takes the union of the links
of both orders (a superset of the paper's links).
"""
from __future__ import annotations

import numpy as np

from cion.denoise.parallel import pmap

#: float32 band products are re-checked in float64 when within this of the threshold
_MARGIN = 2e-4

ORDERS = ("sequence", "coarse", "both")


def band_links(U64: np.ndarray, U32: np.ndarray, perm: np.ndarray, r_s: int, sigma_drm: float,
               block: int = 256, progress=None, threads: int = 1):
    """Linking relations of a sliding range of half-width ``r_s`` over the order ``perm``.

    Args:
        U64: (G, D) float64 unit centroids (zero rows: distance 1 to everything).
        U32: the same in float32 (used for the band products).
        perm: (G,) the sequence: ``perm[k]`` is the group at position k.
        r_s: half-width of the sliding range (positions ``|i - c| <= r_s`` are compared).
        sigma_drm: link when ``1 - cos < sigma_drm``.

    Returns:
        ``(i, j)`` int64 arrays of linked group ids.
    """
    G = len(perm)
    out_i, out_j = [], []
    if G < 2 or r_s < 1:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    Up = U32[perm]
    thr = np.float32(1.0 - sigma_drm - _MARGIN)
    def run(a):                                        # one block of B rows -> its links
        b = min(a + block, G)
        c0, c1 = a + 1, min(G, b + r_s)
        if c0 >= c1:
            return None
        sims = Up[a:b] @ Up[c0:c1].T                   # (B, C) float32
        gap = np.arange(c0, c1)[None, :] - np.arange(a, b)[:, None]
        ii, jj = np.nonzero((sims > thr) & (gap >= 1) & (gap <= r_s))
        if progress is not None:
            progress(b - a)
        if len(ii) == 0:
            return None
        pi, pj = perm[a + ii], perm[c0 + jj]
        d = 1.0 - np.einsum("ij,ij->i", U64[pi], U64[pj])
        ok = d < sigma_drm
        return pi[ok], pj[ok]

    for r in pmap(run, range(0, G, block), threads):
        if r is not None:
            out_i.append(r[0])
            out_j.append(r[1])
    if not out_i:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(out_i), np.concatenate(out_j)


def coarse_order(U32: np.ndarray, r_s: int, seed: int = 0) -> np.ndarray:
    """A sequence order that puts similar centroids next to each other.

    Cells: k-means (faiss, spherical) with about one cell per ``max(r_s, 64)`` groups, trained on a sample;
    cells are visited in the order of their centroids' projection on the first principal
    direction, groups inside a cell keep their sequence order. Returns a permutation (G,).
    """
    import faiss

    G, D = U32.shape
    k = int(max(1, min(G // max(r_s, 64), 4096)))   # cells of >= 64 groups (k-means cost)
    if k <= 1:
        return np.arange(G)
    rng = np.random.default_rng(seed)
    sample = U32[np.sort(rng.choice(G, size=min(G, 64 * k), replace=False))]
    if len(sample) < 39 * k:                          # faiss wants >= 39 points per centroid
        k = max(1, len(sample) // 39)
        if k <= 1:
            return np.arange(G)
    km = faiss.Kmeans(D, k, niter=10, spherical=True, seed=seed, verbose=False)
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    _, cell = km.index.search(np.ascontiguousarray(U32, dtype=np.float32), 1)
    cell = cell[:, 0]
    cent = km.centroids
    mean = cent.mean(axis=0)
    _, _, vt = np.linalg.svd(cent - mean, full_matrices=False)
    rank_of_cell = np.argsort(np.argsort((cent - mean) @ vt[0], kind="stable"), kind="stable")
    return np.lexsort((np.arange(G), rank_of_cell[cell]))


def cross_links(U64: np.ndarray, r_s: int, sigma_drm: float, order: str = "sequence",
                seed: int = 0, progress=None, threads: int = 1):
    """All linking relations of level 3 for the groups in sequence order ``0..G-1``.

    ``order``: ``sequence`` (paper), ``coarse`` (slide over :func:`coarse_order`), or ``both``.
    """
    if order not in ORDERS:
        from cion.errors import CionError
        raise CionError(f"unknown cross-video order '{order}'; choose one of {list(ORDERS)}")
    U32 = U64.astype(np.float32)
    G = len(U64)
    parts = []
    if order in ("sequence", "both"):
        parts.append(band_links(U64, U32, np.arange(G), r_s, sigma_drm, progress=progress,
                                threads=threads))
    if order in ("coarse", "both"):
        parts.append(band_links(U64, U32, coarse_order(U32, r_s, seed), r_s, sigma_drm,
                                threads=threads))
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
