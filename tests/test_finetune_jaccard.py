"""Sparse k-reciprocal Jaccard distance against a dense transcription of the classic code, and
DBSCAN on it equal to DBSCAN on the dense matrix."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cion.errors import CionError
from cion.finetune.cluster import cluster_dbscan
from cion.finetune.jaccard import jaccard_distance, knn_inner_product
from cion.finetune.reference import classic_jaccard


def _unit(a):
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def random_features(n=150, d=16, seed=0):
    return _unit(np.random.default_rng(seed).standard_normal((n, d)))


def clustered_features(n_clusters=12, per=(3, 20), d=32, noise=0.35, outliers=20, seed=1):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d))
    sizes = rng.integers(per[0], per[1], n_clusters)
    rows = [c + noise * rng.standard_normal((s, d)) for c, s in zip(centres, sizes)]
    rows.append(rng.standard_normal((outliers, d)) * 1.5)
    x = np.concatenate(rows)
    return _unit(x[rng.permutation(len(x))])


def _dense_of(csr: sp.csr_matrix) -> np.ndarray:
    out = np.ones(csr.shape, dtype=np.float32)
    coo = csr.tocoo()
    out[coo.row, coo.col] = coo.data
    return out


@pytest.mark.parametrize("make,k1,k2", [(random_features, 30, 6), (clustered_features, 30, 6),
                                        (clustered_features, 20, 1), (random_features, 7, 3)])
def test_matches_classic_dense_code(make, k1, k2):
    x = make()
    ref = classic_jaccard(x, k1, k2)
    for search in ("faiss", "torch"):
        got = jaccard_distance(x, k1, k2, search=search)
        assert isinstance(got, sp.csr_matrix) and got.shape == ref.shape and got.dtype == np.float32
        # exactly the pairs below 1 are stored, plus the diagonal
        stored = _dense_of(got) < 1
        np.fill_diagonal(stored, True)
        assert np.array_equal(stored | (ref < 1), stored)
        assert np.array_equal((ref < 1 - 1e-6) & ~stored, np.zeros_like(stored))
        assert np.abs(_dense_of(got) - ref).max() <= 1e-5
        assert np.all(got.diagonal() == 0) and got.nnz - np.count_nonzero(got.data) >= len(x)


def test_small_budgets_give_the_same_matrix():
    x = clustered_features(seed=3)
    a = jaccard_distance(x, 15, 4, search="torch")
    b = jaccard_distance(x, 15, 4, search="torch", block=37, pair_budget=100)
    assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
    assert np.abs(a.data - b.data).max() <= 1e-6      # BLAS block sizes round differently


def test_dbscan_sparse_equals_dense():
    from sklearn.cluster import DBSCAN

    x = clustered_features(n_clusters=15, seed=5)
    dense = classic_jaccard(x, 20, 6)
    sparse = jaccard_distance(x, 20, 6)
    found = {}
    for eps in (0.3, 0.5, 0.6, 0.7, 0.9):
        ref = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(dense)
        got = cluster_dbscan(sparse, eps, 4)
        assert np.array_equal(got, ref), eps
        found[eps] = (got.max() + 1, (got < 0).sum())
    # not vacuous: the planted 15 clusters and outliers at small eps, one blob at eps 0.9
    assert found[0.3][0] == 15 and found[0.3][1] > 0 and found[0.9][0] == 1


def test_knn_search_agrees():
    x = random_features(200, 8, seed=7)
    a = knn_inner_product(x, 10, search="faiss")
    b = knn_inner_product(x, 10, search="torch", block_elements=300)
    assert np.array_equal(a, b) and np.array_equal(a[:, 0], np.arange(200))


def test_bad_inputs():
    x = random_features(20, 4)
    with pytest.raises(CionError, match="k1=30"):
        jaccard_distance(x, 30, 6)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(CionError, match="NaN"):
        jaccard_distance(bad, 5, 2)
    with pytest.raises(CionError, match="search"):
        jaccard_distance(x, 5, 2, search="gpu")
