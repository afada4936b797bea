"""A slow, obviously correct reference for Cluster Contrast's pseudo-labels (paper Sec. 4.2,
Table 2: USL / UDA): the dense k-reciprocal Jaccard distance, line by line the classic algorithm
(Zhong et al. 2017, as the public Cluster Contrast code runs it), for tests and for the
benchmark's side-by-side figures. Dense (N, N) float32 arrays: small N only; the library's
:func:`cion.finetune.jaccard.jaccard_distance` is the bounded-memory one.
"""
from __future__ import annotations

import numpy as np


def classic_jaccard(x: np.ndarray, k1: int = 30, k2: int = 6,
                    initial_rank: np.ndarray | None = None) -> np.ndarray:
    """Dense (N, N) Jaccard distance of (N, D) L2-normalised features ``x``: k1-NN rank (self
    first; ``initial_rank`` (N, >= k1) when given, e.g. a faiss search, else an exact stable
    sort), k-reciprocal sets with Python loops, softmax(-squared distance) weights on the
    expanded sets, query expansion as a mean of k2 rows, inverted-index Jaccard."""
    n = len(x)
    if initial_rank is None:
        sim = x @ x.T
        initial_rank = np.argsort(-sim, axis=1, kind="stable")[:, :k1]

    def k_reciprocal_neigh(i, k):
        forward = initial_rank[i, :k + 1]
        backward = initial_rank[forward, :k + 1]
        return forward[np.where(backward == i)[0]]

    kh = int(np.around(k1 / 2))
    nn_k1 = [k_reciprocal_neigh(i, k1) for i in range(n)]
    nn_half = [k_reciprocal_neigh(i, kh) for i in range(n)]
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        rec = nn_k1[i]
        expansion = rec
        for cand in rec:
            cand_rec = nn_half[cand]
            if len(np.intersect1d(cand_rec, rec)) > 2 / 3 * len(cand_rec):
                expansion = np.append(expansion, cand_rec)
        expansion = np.unique(expansion)
        dist = (2 - 2 * x[i] @ x[expansion].T).astype(np.float32)
        e = np.exp(-(dist - dist.min()))
        v[i, expansion] = e / e.sum()
    if k2 != 1:
        v = np.stack([v[initial_rank[i, :k2]].mean(axis=0) for i in range(n)]).astype(np.float32)
    inv_index = [np.where(v[:, i] != 0)[0] for i in range(n)]
    jac = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        temp_min = np.zeros(n, dtype=np.float32)
        nonzero = np.where(v[i] != 0)[0]
        for k in nonzero:
            temp_min[inv_index[k]] += np.minimum(v[i, k], v[inv_index[k], k])
        jac[i] = 1 - temp_min / (2 - temp_min)
    jac[jac < 0] = 0
    return jac
