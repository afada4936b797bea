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


def unit_rows(S: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Unit direction of each centroid ``S / counts`` (rows of sums); rows with a numerically zero
    centroid (``|S| / count <= ZERO_NORM``) become zero vectors, so their distance to anything is
    ``1 - 0 = 1`` as the rules require. Same dtype as ``S``."""
    norm = np.sqrt(np.einsum("ij,ij->i", S, S, dtype=np.float64))
    zero = norm / np.maximum(counts, 1) <= ZERO_NORM
    scale = np.where(zero, 0.0, 1.0 / np.where(zero, 1.0, norm))
    return S * scale[:, None].astype(S.dtype)


def segment_sums(X: np.ndarray, owner: np.ndarray, n_owners: int) -> np.ndarray:
    """Sum the rows of ``X`` (M, D) by ``owner`` (M,) into (n_owners, D) float64 (any order)."""
    out = np.zeros((n_owners, X.shape[1]))
    if len(owner) == 0:
        return out
    srt = np.argsort(owner, kind="stable")
    o = owner[srt]
    st = run_starts(o)
    out[o[st]] = np.add.reduceat(X[srt], st, axis=0)
    return out


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


def padded_batches(nq: np.ndarray, nk: np.ndarray, max_cells: int = 1 << 22,
                   max_rows: int = 1 << 15):
    """Group segments for padded batched matrix products of their (queries x keys) blocks.

    Segments with ``nq > 0`` and ``nk > 0`` are bucketed by the next powers of two of their
    sizes and cut into batches of at most ``max_cells`` products and ``max_rows`` padded rows.
    A segment too large for one batch is split into query tiles.

    Yields ``(segs, q0, mq, mk)``: segment ids, the first query of the tile (0 unless tiled),
    and the padded query / key counts of the batch.
    """
    nq = np.asarray(nq, dtype=np.int64)
    nk = np.asarray(nk, dtype=np.int64)
    idx = np.flatnonzero((nq > 0) & (nk > 0))
    if len(idx) == 0:
        return
    bq = 1 << np.ceil(np.log2(nq[idx])).astype(np.int64)
    bk = 1 << np.ceil(np.log2(nk[idx])).astype(np.int64)
    key = bq * (1 << 32) + bk
    o = np.argsort(key, kind="stable")
    idx, key, bq, bk = idx[o], key[o], bq[o], bk[o]
    for st in run_starts(key):                     # one iteration per size bucket
        en = st + int(np.searchsorted(key[st:], key[st], side="right"))
        segs = idx[st:en]
        mq, mk = int(nq[segs].max()), int(nk[segs].max())
        per = max(1, min(max_cells // max(mq * mk, 1), max_rows // max(mq, mk, 1)))
        if mq * mk > max_cells and len(segs) >= 1 and per == 1:
            tile = max(1, max_cells // mk)
            for s in segs:                           # large segments: one at a time, tiled
                for q0 in range(0, int(nq[s]), tile):
                    yield np.array([s]), q0, min(tile, int(nq[s]) - q0), int(nk[s])
            continue
        for a in range(0, len(segs), per):
            g = segs[a:a + per]
            yield g, 0, int(nq[g].max()), int(nk[g].max())


def padded_index(starts: np.ndarray, segs: np.ndarray, q0: int, m: int):
    """Indices (G, m) of items ``starts[s] + q0 + 0..m-1`` and a validity mask (G, m)."""
    loc = q0 + np.arange(m)[None, :]
    n = (starts[segs + 1] - starts[segs])[:, None]
    valid = loc < n
    idx = np.where(valid, starts[segs][:, None] + loc, 0)
    return idx, valid
