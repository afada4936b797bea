"""Vectorised helpers over contiguous segments (tracklets, videos) and graph closure.

A *segment layout* is an int64 array ``starts`` of length ``S + 1``: segment ``s`` holds the
items ``starts[s]:starts[s + 1]``. Nothing here loops in Python over items or pairs.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from cion.denoise.reference import TIE_EPS, ZERO_NORM


def expand_ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``arange(lo[k], hi[k])`` for all k.

    Returns ``(items, owner)``: items (sum(hi - lo),) int64 and the index ``k`` each came from.
    """
    lo = np.asarray(lo, dtype=np.int64)
    lens = np.asarray(hi, dtype=np.int64) - lo
    owner = np.repeat(np.arange(len(lo)), lens)
    offs = np.cumsum(lens) - lens
    items = lo[owner] + (np.arange(int(lens.sum())) - offs[owner])
    return items, owner


def run_starts(owner: np.ndarray) -> np.ndarray:
    """Start index of each run of equal consecutive values in ``owner`` (non-empty)."""
    return np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])


def segmented_argmax_first(values: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Per run of ``owner``: index of the first item within ``TIE_EPS`` of the run's maximum.

    ``values``/``owner`` have the same length, items of one owner contiguous and in manifest
    order, so "first" is the earliest manifest row. Returns one index per run.
    """
    starts = run_starts(owner)
    mx = np.maximum.reduceat(values, starts)
    run = np.cumsum(np.r_[0, (owner[1:] != owner[:-1]).astype(np.int64)])
    cand = values >= mx[run] - TIE_EPS
    big = np.iinfo(np.int64).max
    return np.minimum.reduceat(np.where(cand, np.arange(len(values)), big), starts)


def unit_rows(S: np.ndarray, counts: np.ndarray, dtype=None, out=None) -> np.ndarray:
    """Unit direction of each centroid ``S / counts`` (rows of sums); rows with a numerically zero
    centroid (``|S| / count <= ZERO_NORM``) become zero vectors, so their distance to anything is
    ``1 - 0 = 1`` as the rules require.

    ``dtype``: result dtype (default that of ``S``); ``out=S`` scales ``S`` in place.
    """
    norm = np.sqrt(np.einsum("ij,ij->i", S, S, dtype=np.float64))
    zero = norm / np.maximum(counts, 1) <= ZERO_NORM
    scale = np.where(zero, 0.0, 1.0 / np.where(zero, 1.0, norm))
    if out is not None:
        out *= scale[:, None].astype(out.dtype)
        return out
    res = np.empty(S.shape, dtype=dtype or S.dtype)
    for a in range(0, len(S), 65536):               # blocks: no full-size float64 temporary
        res[a:a + 65536] = S[a:a + 65536] * scale[a:a + 65536, None]
    return res


def add_rows(S: np.ndarray, X: np.ndarray, owner: np.ndarray) -> None:
    """``S[owner[k]] += X[k]`` for all k (repeated owners accumulate), in place."""
    if len(owner) == 0:
        return
    u, inv = np.unique(owner, return_inverse=True)
    S[u] += segment_sums(X, inv, len(u))


def segment_sums(X: np.ndarray, owner: np.ndarray, n_owners: int) -> np.ndarray:
    """Sum the rows of ``X`` (M, D) by ``owner`` (M,) into (n_owners, D) float64 (any order)."""
    if len(owner) == 0:
        return np.zeros((n_owners, X.shape[1]))
    ind = sp.csr_matrix((np.ones(len(owner)), (owner, np.arange(len(owner)))),
                        shape=(n_owners, len(owner)))
    return np.asarray(ind @ np.asarray(X, dtype=np.float64))       # sparse indicator product


def components(n: int, ei: np.ndarray, ej: np.ndarray) -> np.ndarray:
    """Connected components (transitive closure) of an undirected graph on ``n`` nodes.

    Returns a label per node; labels are numbered by each component's smallest node, so the
    result does not depend on the edge order.
    """
    ei = np.asarray(ei, dtype=np.int64)
    ej = np.asarray(ej, dtype=np.int64)
    g = sp.coo_matrix((np.ones(len(ei), dtype=np.int8), (ei, ej)), shape=(n, n)).tocsr()
    _, lab = connected_components(g, directed=False)
    first = np.full(lab.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, lab, np.arange(n))
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[lab]


def number_by_first_row(labels: np.ndarray) -> np.ndarray:
    """Renumber ``labels`` (N,) (-1 = none) 0..M-1 in order of each label's first row."""
    out = np.full(len(labels), -1, dtype=np.int64)
    ok = labels >= 0
    if not ok.any():
        return out
    uniq, first = np.unique(labels[ok], return_index=True)
    rows = np.flatnonzero(ok)[first]
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(rows, kind="stable")] = np.arange(len(uniq))
    out[ok] = rank[np.searchsorted(uniq, labels[ok])]
    return out
