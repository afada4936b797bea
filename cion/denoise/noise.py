"""The noise of a labelled sample set (paper Eq. 1-3).

For spheres (identities) ``k = 1..M`` with centroid ``c_k`` (mean of the members):

* Eq. 1: ``n_cst_k = [r_k >= sigma_cst]`` with ``r_k = max_i d(x_i, c_k)`` (the test Eq. 4 uses);
* Eq. 2: ``n_drm_ij = [d(c_i, c_j) < sigma_drm]`` (the test Eq. 6-7 use to link);
* ``n_S = (sum_k n_cst_k + sum_{i != j} n_drm_ij) / M`` - ordered pairs, so each close pair
  counts twice, as the double sum of Eq. 3 is written.

The radii need one dot product per image with its own centroid (callers pass them in). The close
centroid pairs are counted exactly (blocked products) up to ``exact_limit`` spheres; above it by a
neighbour search that only compares centroids falling in the same cell of a k-means tree (cells of
about ``cell_size``), which is ``O(M * cell_size * D)`` instead of ``O(M^2 * D)``. That count can
miss close pairs split across cells (a lower bound); the stats say which one was used.
"""
from __future__ import annotations

import numpy as np

from cion.denoise.parallel import pmap


def _count_block_pairs(U: np.ndarray, sigma_drm: float, block: int = 2048) -> int:
    """Exact number of unordered pairs i < j of rows of U with ``1 - <u_i, u_j> < sigma_drm``."""
    n = len(U)
    total = 0
    for a in range(0, n, block):                 # blocked upper triangle
        b = min(a + block, n)
        d = 1.0 - U[a:b] @ U[a:].T
        upper = np.arange(a, n)[None, :] > np.arange(a, b)[:, None]
        total += int(np.count_nonzero((d < sigma_drm) & upper))
    return total


def _pair_keys(U: np.ndarray, idx: np.ndarray, sigma_drm: float, M: int,
               block: int = 2048) -> np.ndarray:
    """Keys ``i * M + j`` (i < j, global ids) of the close pairs among rows ``idx`` of U."""
    out = []
    Ui = U[idx]
    n = len(idx)
    for a in range(0, n, block):                 # blocked upper triangle
        b = min(a + block, n)
        d = 1.0 - Ui[a:b] @ Ui[a:].T
        upper = np.arange(a, n)[None, :] > np.arange(a, b)[:, None]
        ii, jj = np.nonzero((d < sigma_drm) & upper)
        gi, gj = idx[a + ii], idx[a + jj]
        out.append(np.minimum(gi, gj) * M + np.maximum(gi, gj))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _tree_cells(U: np.ndarray, idx: np.ndarray, cell_size: int, seed: int, probes: int = 2,
                depth: int = 0):
    """Cover ``idx`` with cells of about ``cell_size`` rows by recursive spherical k-means.

    Every row belongs to its nearest cell; at the last level it is also put in its
    ``probes - 1`` next nearest cells, so close pairs split by a cell boundary are still seen
    together (cells then overlap; callers deduplicate pairs).
    """
    if len(idx) <= 4 * cell_size or depth >= 4:
        return [idx]
    import faiss

    k = int(min(256, -(-len(idx) // cell_size)))
    rng = np.random.default_rng(seed + depth)
    sample = U[np.sort(rng.choice(idx, size=min(len(idx), 48 * k), replace=False))]
    km = faiss.Kmeans(U.shape[1], k, niter=8, spherical=True, seed=seed + depth, verbose=False)
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    probes = max(1, min(probes, k))
    _, near = km.index.search(np.ascontiguousarray(U[idx], dtype=np.float32), probes)
    prim = near[:, 0]
    counts = np.bincount(prim, minlength=k)
    if (counts > 0).sum() <= 1:
        return [idx]
    flat_cell = near.ravel()
    flat_row = np.repeat(np.arange(len(idx)), probes)
    first = np.tile(np.arange(probes) == 0, len(idx))
    big = counts[flat_cell] > 4 * cell_size          # big cells recurse on their own rows
    keep = ~big | first
    flat_cell, flat_row, first = flat_cell[keep], flat_row[keep], first[keep]
    o = np.lexsort((flat_row, flat_cell))
    flat_cell, flat_row = flat_cell[o], flat_row[o]
    bounds = np.searchsorted(flat_cell, np.arange(k + 1))
    out = []
    for c in range(k):                                # one iteration per cell
        rows = idx[flat_row[bounds[c]:bounds[c + 1]]]
        if len(rows) == 0:
            continue
        if counts[c] > 4 * cell_size:
            out.extend(_tree_cells(U, rows, cell_size, seed, probes, depth + 1))
        else:
            out.append(rows)
    return out


def count_close_pairs(U: np.ndarray, sigma_drm: float, *, exact_limit: int = 4096,
                      cell_size: int = 512, probes: int = 2, seed: int = 0,
                      threads: int = 1) -> tuple[int, bool]:
    """Unordered pairs of centroid directions ``U`` (M, D) closer than ``sigma_drm``.

    Exact (blocked products) up to ``exact_limit`` rows; above, only pairs sharing one of the
    overlapping k-means cells (each row in its ``probes`` nearest cells) are compared and the
    pairs found are deduplicated - a lower bound. Returns ``(count, exact)``. Rows of zeros
    (zero centroids) are never close to anything.
    """
    M = len(U)
    if M <= exact_limit:
        return _count_block_pairs(np.asarray(U, dtype=np.float64), sigma_drm), True
    U32 = np.asarray(U, dtype=np.float32)
    cells = _tree_cells(U32, np.arange(M), cell_size, seed, probes)
    keys = pmap(lambda c: _pair_keys(U32, c, sigma_drm, M), cells, threads)
    return int(len(np.unique(np.concatenate(keys)))) if keys else 0, False


def noise_from_dots(labels: np.ndarray, own_dot: np.ndarray, U: np.ndarray,
                    sigma_cst: float, sigma_drm: float, **search) -> dict:
    """n_S of a labelling.

    Args:
        labels: (K,) sphere id 0..M-1 of each member (members only; no -1).
        own_dot: (K,) ``<x_i, u_label>`` with ``u`` the unit centroid direction (0 for a zero
            centroid), so ``d(x_i, c) = 1 - own_dot``.
        U: (M, D) unit centroid directions.

    Returns a dict: ``identities``, ``n_cst`` (spheres with radius >= sigma_cst), ``n_drm_pairs``
    (unordered close pairs), ``n_S``, ``n_S_exact`` (False when the pair count is the neighbour-
    search lower bound).
    """
    M = len(U)
    if M == 0:
        return {"identities": 0, "n_cst": 0, "n_drm_pairs": 0, "n_S": 0.0, "n_S_exact": True}
    mind = np.full(M, np.inf)
    np.minimum.at(mind, labels, own_dot)
    n_cst = int(np.count_nonzero(1.0 - mind >= sigma_cst))
    pairs, exact = count_close_pairs(U, sigma_drm, **search)
    return {"identities": int(M), "n_cst": n_cst, "n_drm_pairs": int(pairs),
            "n_S": (n_cst + 2 * pairs) / M, "n_S_exact": bool(exact)}
