"""k-reciprocal Jaccard distance for pseudo-labelling (Zhong et al., CVPR 2017), sparse.

Cluster Contrast (Dai et al. 2021) clusters the unlabelled training images every epoch with
DBSCAN on this distance (paper Sec. 4.1: USL / UDA fine-tuning). The public code builds three
dense (N, N) matrices (V, its query expansion and the distance itself); at MSMT17 size
(N = 32,621) each takes 4.3 GB. Here nothing of size N x N is ever dense:

1. ``k1`` nearest neighbours of every image (faiss-cpu ``IndexFlatL2`` as the public code when
   faiss can be imported, else an exact blocked top-k of inner products in torch: the same
   ranking on unit vectors; self is its own first neighbour);
2. k-reciprocal sets R(i, k1), half-size sets R(j, round(k1 / 2)) and the expansion rule
   (|R_half(j) & R(i)| > 2/3 |R_half(j)|) evaluated in batches on the neighbour lists, as
   :mod:`cion.evaluation.rerank` does (its ``_reciprocal`` helper; the membership test here
   is a sorted search);
3. V[i, j] = softmax over j in the expanded set of ``-(2 - 2 x_i . x_j)`` (squared Euclidean
   distance of L2-normalised features; the inner products come from the search where j is
   among i's k1 nearest, the rest are computed), a sparse CSR matrix, then averaged over each
   image's ``k2`` nearest neighbours (query expansion);
4. ``d(i, j) = 1 - s / (2 - s)`` with ``s = sum_k min(V[i, k], V[j, k])``, accumulated from the
   columns of V one chunk of rows at a time.

Pairs whose expanded sets share no column have ``s = 0``, i.e. a distance of exactly 1: they are
not stored. The diagonal is stored as explicit zeros. So for any ``eps < 1``,
``sklearn.cluster.DBSCAN(eps, metric="precomputed")`` gives the same labels on the returned CSR
matrix as on the dense one (sklearn reads unstored entries of a sparse precomputed matrix as
"not a neighbour"; stored zeros count): see :func:`cion.finetune.cluster.cluster_dbscan`.
Memory is O(N k1^2) for the sets and O(stored pairs) for the result (about 10^7 pairs for
MSMT17's training set); ``benchmarks/finetune_scale.py`` measures it.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from cion.errors import CionError
from cion.evaluation.rerank import _pair_cost, _reciprocal, _shared_minima

#: rows of the (rows, N) similarity block held at once by the exact top-k search
DEFAULT_BLOCK_ELEMENTS = 1 << 24
#: (row, column) contributions to the Jaccard sums accumulated at once
DEFAULT_PAIR_BUDGET = 1 << 23


def _faiss():
    try:
        import faiss  # noqa: F401
    except ImportError:
        return None
    return faiss


def knn_inner_product(features: np.ndarray, k: int, *, search: str = "auto",
                      block_elements: int = DEFAULT_BLOCK_ELEMENTS,
                      return_similarities: bool = False):
    """(N, k) int64 indices of the ``k`` largest inner products of each row (itself included),
    best first; with ``return_similarities`` also the (N, k) float32 inner products.

    Features must be L2-normalised. ``search``: ``"faiss"`` (faiss-cpu ``IndexFlatL2``, exact,
    the public code's search; similarities ``1 - d^2 / 2``), ``"torch"`` (exact blocked ``topk``
    of inner products; at most ``block_elements`` similarities held at once) or ``"auto"``
    (faiss when importable). Both are exact; they can differ only in the order of
    similarities tied to float rounding (~1e-7).
    """
    n = features.shape[0]
    if search not in ("auto", "faiss", "torch"):
        raise CionError(f"neighbour search must be 'auto', 'faiss' or 'torch', got {search!r}")
    faiss = _faiss() if search in ("auto", "faiss") else None
    if search == "faiss" and faiss is None:
        raise CionError("neighbour search 'faiss' needs faiss-cpu, which is not installed. "
                        "Fix: pip install faiss-cpu (a dependency of cion) or use search='torch'")
    if faiss is not None:
        # squared L2 as the public Cluster Contrast code searches: on unit vectors it ranks like
        # the inner product (1 - d^2 / 2), and near-ties (1e-7 apart) come out in its order
        index = faiss.IndexFlatL2(features.shape[1])
        index.add(features)
        d2, idx = index.search(features, k)
        sims, idx = 1.0 - 0.5 * d2, idx.astype(np.int64)
    else:
        x = torch.from_numpy(features)
        idx = np.empty((n, k), dtype=np.int64)
        sims = np.empty((n, k), dtype=np.float32)
        step = max(1, block_elements // max(n, 1))
        for s in range(0, n, step):
            top = torch.topk(x[s:s + step] @ x.T, k, dim=1, largest=True, sorted=True)
            idx[s:s + step], sims[s:s + step] = top.indices.numpy(), top.values.numpy()
    return (idx, sims.astype(np.float32)) if return_similarities else idx


def _expanded_sets(recip: torch.Tensor, half: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows start..stop of the expanded sets (R(i) plus every R_half(c), c in R(i), sharing more
    than 2/3 of its members with R(i)), as :func:`cion.evaluation.rerank._expanded_sets` but
    with a sorted-search membership test (O(k1 kh log k1) per row, not O(k1^2 kh)).
    Returns (b, L) indices, ascending, -1 = empty slot first, L = the largest set."""
    r = recip[start:stop]                                     # (b, k1), -1 = not reciprocal
    b, k1 = r.shape
    r_sorted = torch.sort(r, 1).values
    cand = half[r.clamp(min=0)]                                # (b, k1, kh+1)
    cand = torch.where((r >= 0)[..., None], cand, torch.full_like(cand, -1))
    flat = cand.reshape(b, -1)
    pos = torch.searchsorted(r_sorted, flat).clamp_(max=k1 - 1)
    found = (r_sorted.gather(1, pos) == flat) & (flat >= 0)
    shared = found.reshape(cand.shape).sum(-1)
    size = (cand >= 0).sum(-1)
    accept = shared.to(torch.float64) > (2.0 / 3) * size.to(torch.float64)
    extra = torch.where(accept[..., None], cand, torch.full_like(cand, -1))
    allv = torch.sort(torch.cat([r, extra.flatten(1)], 1), 1).values
    dup = torch.zeros_like(allv, dtype=torch.bool)
    dup[:, 1:] = allv[:, 1:] == allv[:, :-1]
    allv = torch.sort(torch.where(dup, torch.full_like(allv, -1), allv), 1).values
    width = int((allv >= 0).sum(1).max())
    return allv[:, allv.shape[1] - width:]


def _expansion_weights(x: torch.Tensor, nn: torch.Tensor, nn_sims: torch.Tensor, k1: int,
                       k2: int, rows_per_chunk: int = 1024) -> sp.csr_matrix:
    """The (N, N) sparse V of step 3, query-expanded over ``k2`` neighbours, float32.

    Inner products of the pairs (i, j) of the expanded sets come from the neighbour search when
    j is among i's ``k1`` nearest (most of them) and are computed otherwise."""
    n = x.shape[0]
    recip = _reciprocal(nn, k1)                               # (N, k1), -1 = not reciprocal
    kh = int(np.around(k1 / 2.0))
    half = _reciprocal(nn, kh)[:, :kh + 1]
    rows_l, cols_l, vals_l = [], [], []
    for s in range(0, n, rows_per_chunk):
        e = min(n, s + rows_per_chunk)
        ex = _expanded_sets(recip, half, s, e)                 # (b, L), -1 = empty
        match = ex[..., None] == nn[s:e, None, :]              # (b, L, k1)
        known = match.any(-1)
        sim = nn_sims[s:e].gather(1, match.to(torch.uint8).argmax(-1))
        valid = ex >= 0
        missing = torch.nonzero(valid & ~known, as_tuple=True)
        if len(missing[0]):
            ii, jj = missing[0] + s, ex[missing]
            piece = max(1, (1 << 22) // max(x.shape[1], 1))    # bounds the gathered rows
            sim[missing] = torch.cat([(x[ii[p:p + piece]] * x[jj[p:p + piece]]).sum(1)
                                      for p in range(0, len(ii), piece)])
        w = torch.where(valid, torch.exp(-(2.0 - 2.0 * sim)), torch.zeros_like(sim))
        w = w / w.sum(1, keepdim=True)
        r, c = torch.nonzero(valid, as_tuple=True)
        rows_l.append((r + s).numpy())
        cols_l.append(ex[r, c].numpy())
        vals_l.append(w[r, c].numpy())
    v = sp.csr_matrix((np.concatenate(vals_l), (np.concatenate(rows_l), np.concatenate(cols_l))),
                      shape=(n, n), dtype=np.float32)
    if k2 != 1:
        a = sp.csr_matrix((np.full(n * k2, 1.0 / k2, dtype=np.float32),
                           (np.repeat(np.arange(n), k2), nn[:, :k2].reshape(-1).numpy())),
                          shape=(n, n))
        v = (a @ v).tocsr()
    v.sort_indices()
    return v


def _jaccard_sparse(v: sp.csr_matrix, pair_budget: int) -> sp.csr_matrix:
    """Step 4: CSR (N, N) of ``1 - s / (2 - s)`` where ``s > 0`` (and < 1), explicit 0 diagonal."""
    n = v.shape[0]
    vc = v.tocsc()                                            # column k -> rows j with V[j, k] > 0
    col_nnz = np.diff(vc.indptr).astype(np.int64)
    # cost of each row = number of (its nonzero, column nonzero) pairs it expands to
    cost = _pair_cost(v, col_nnz)
    indptr = [np.zeros(1, dtype=np.int64)]
    indices_l, data_l = [], []
    done = 0
    s = 0
    while s < n:
        acc = np.cumsum(cost[s:])
        e = s + max(1, int(np.searchsorted(acc, pair_budget, side="right")))
        i, jj, contrib = _shared_minima(v, s, e, vc, col_nnz)
        # (+ an explicit (i, i) entry of 0, so the diagonal is stored even for an empty row)
        smin = sp.csr_matrix((np.concatenate([contrib, np.zeros(e - s, np.float32)]),
                              (np.concatenate([i, np.arange(e - s)]),
                               np.concatenate([jj, np.arange(s, e)]))),
                             shape=(e - s, n), dtype=np.float32)     # sums duplicate (i, j)
        smin.sum_duplicates()
        rows = np.repeat(np.arange(s, e), np.diff(smin.indptr))
        dist = 1.0 - smin.data / (2.0 - smin.data)
        np.maximum(dist, 0.0, out=dist)
        dist[smin.indices == rows] = 0.0                       # s(i, i) = sum_k V[i, k] = 1
        keep = dist < 1.0
        kept_per_row = np.add.reduceat(np.append(keep, False).astype(np.int64),
                                       smin.indptr[:-1]) * (np.diff(smin.indptr) > 0)
        indptr.append(done + np.cumsum(kept_per_row))
        done += int(kept_per_row.sum())
        indices_l.append(smin.indices[keep].astype(np.int32))
        data_l.append(dist[keep].astype(np.float32))
        s = e
    out = sp.csr_matrix((np.concatenate(data_l), np.concatenate(indices_l), np.concatenate(indptr)),
                        shape=(n, n))
    out.has_sorted_indices = True
    return out


def jaccard_distance(features, k1: int = 30, k2: int = 6, *, search: str = "auto",
                     block: int = DEFAULT_BLOCK_ELEMENTS,
                     pair_budget: int = DEFAULT_PAIR_BUDGET) -> sp.csr_matrix:
    """k-reciprocal Jaccard distance among N images, sparse (see the module docstring).

    Args:
        features: (N, D) L2-normalised features (numpy or torch, any float dtype; computed in
            float32 on the CPU).
        k1: size of the k-reciprocal neighbourhood (Cluster Contrast: 30).
        k2: query-expansion neighbours (Cluster Contrast: 6); 1 disables it.
        search: neighbour search, ``"auto"`` / ``"faiss"`` / ``"torch"``
            (:func:`knn_inner_product`).
        block: similarities held at once by the torch top-k search.
        pair_budget: Jaccard contributions accumulated at once (memory knob of step 4).

    Returns:
        ``scipy.sparse.csr_matrix`` (N, N) float32, symmetric (up to float rounding), holding every pair with a
        distance below 1 (distances in [0, 1)) and an explicit 0 on the diagonal; every pair
        not stored has distance exactly 1. Row indices sorted.
    """
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float32).numpy()
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0:
        raise CionError(f"jaccard_distance: features must be a non-empty (N, D) array, got shape "
                        f"{x.shape}")
    if not np.isfinite(x).all():
        raise CionError("jaccard_distance: features contain NaN or inf. Fix: check the model's "
                        "output (a diverged run?) before clustering")
    n = x.shape[0]
    if k1 < 1 or not 1 <= k2 <= k1:
        raise CionError(f"jaccard_distance needs k1 >= 1 and 1 <= k2 <= k1 (got k1={k1}, k2={k2})")
    if n < k1:
        raise CionError(f"jaccard_distance with k1={k1} needs at least {k1} images, got {n}. "
                        "Fix: lower k1 or cluster more images")
    nn, sims = knn_inner_product(x, k1, search=search, block_elements=block,
                                 return_similarities=True)
    v = _expansion_weights(torch.from_numpy(x), torch.from_numpy(nn), torch.from_numpy(sims), k1, k2)
    del nn, sims
    return _jaccard_sparse(v, pair_budget)
