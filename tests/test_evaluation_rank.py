"""Rank metrics against a slow, obviously correct per-query loop and hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cion.evaluation import EvaluationError, evaluate_features, evaluate_rank
from cion.evaluation import rank as rank_mod


def slow_reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Per-query loop in plain Python: stable sort, drop junk and same id + same camera."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    aps, inps, cmcs = [], [], []
    for q in range(num_q):
        order = sorted(range(num_g), key=lambda j: (distmat[q, j], j))
        kept = [j for j in order if g_pids[j] != -1
                and not (g_pids[j] == q_pids[q] and g_camids[j] == q_camids[q])]
        hits = [1 if g_pids[j] == q_pids[q] else 0 for j in kept]
        if sum(hits) == 0:
            continue
        found, precisions = 0, []
        for rank, h in enumerate(hits, start=1):
            if h:
                found += 1
                precisions.append(found / rank)
        aps.append(sum(precisions) / len(precisions))
        last = max(i for i, h in enumerate(hits) if h) + 1
        inps.append(sum(hits) / last)
        first = hits.index(1)
        cmcs.append([1.0 if k >= first else 0.0 for k in range(max_rank)])
    return float(np.mean(aps)), float(np.mean(inps)), np.mean(np.array(cmcs), axis=0)


def random_problem(rng, num_q, num_g, num_ids, cams, ties=False, junk=0.1, distractors=0.1):
    q_pids = rng.integers(1, num_ids + 1, num_q)
    g_pids = rng.integers(1, num_ids + 1, num_g)
    g_pids[rng.random(num_g) < junk] = -1
    g_pids[rng.random(num_g) < distractors] = 0
    q_camids = rng.integers(0, cams, num_q)
    g_camids = rng.integers(0, cams, num_g)
    if ties:   # few distinct values: many ties, also between positives and negatives
        d = rng.integers(0, 6, (num_q, num_g)).astype(np.float32)
    else:
        d = rng.random((num_q, num_g)).astype(np.float32)
    return d, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False), (3, True)])
def test_matches_slow_loop_on_random_problems(seed, ties):
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, 40, 300, 12, 4, ties=ties)
    mAP, mINP, cmc = slow_reference(*problem, max_rank=20)
    # tiny chunks so several chunks (and both sparse and dense paths) are exercised
    res = evaluate_rank(*problem, max_rank=20, chunk_elements=1000)
    assert res["mAP"] == pytest.approx(mAP, abs=1e-12)
    assert res["mINP"] == pytest.approx(mINP, abs=1e-12)
    np.testing.assert_allclose(res["cmc"], cmc, atol=1e-12)


def test_queries_without_positives_are_skipped_not_zero():
    rng = np.random.default_rng(5)
    d, qp, gp, qc, gc = random_problem(rng, 30, 200, 8, 3)
    qp[:10] = 999                      # identities absent from the gallery
    res = evaluate_rank(d, qp, gp, qc, gc, max_rank=10)
    assert np.isnan(res["ap"][:10]).all() and (res["first_hit"][:10] == -1).all()
    assert res["num_valid_queries"] <= 20
    mAP, mINP, cmc = slow_reference(d, qp, gp, qc, gc, max_rank=10)
    assert res["mAP"] == pytest.approx(mAP, abs=1e-12)


def test_dense_grid_path_with_weak_model_and_many_positives():
    """Random distances put most negatives before the last positive: the grid path runs."""
    rng = np.random.default_rng(7)
    d, qp, gp, qc, gc = random_problem(rng, 25, 600, 3, 5, junk=0.05, distractors=0.05)
    assert (gp == qp[0]).sum() > 64     # many positives per query
    mAP, mINP, cmc = slow_reference(d, qp, gp, qc, gc, max_rank=50)
    res = evaluate_rank(d, qp, gp, qc, gc, chunk_elements=5000)
    assert res["mAP"] == pytest.approx(mAP, abs=1e-12)
    assert res["mINP"] == pytest.approx(mINP, abs=1e-12)
    np.testing.assert_allclose(res["cmc"], cmc, atol=1e-12)


def test_hand_computed_tiny_case():
    # one query, id 1, camera 0; gallery sorted by distance: [id1 cam0 (dropped), id2, id1 cam1,
    # junk -1, id0 distractor, id1 cam2]. Kept list: id2, id1, id0, id1 -> hits at ranks 2 and 4.
    d = np.array([[0.1, 0.2, 0.3, 0.35, 0.4, 0.5]])
    g_pids = np.array([1, 2, 1, -1, 0, 1])
    g_cams = np.array([0, 1, 1, 1, 1, 2])
    res = evaluate_rank(d, np.array([1]), g_pids, np.array([0]), g_cams, max_rank=5)
    assert res["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)     # AP = 0.5
    assert res["mINP"] == pytest.approx(2 / 4)
    np.testing.assert_allclose(res["cmc"], [0, 1, 1, 1, 1])
    assert res["first_hit"][0] == 1


def test_ties_break_by_gallery_index():
    # all distances equal: the ranking is the gallery order
    d = np.zeros((1, 4))
    res = evaluate_rank(d, np.array([1]), np.array([2, 1, 3, 1]), np.array([0]),
                        np.array([1, 1, 1, 1]), max_rank=4)
    assert res["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    np.testing.assert_allclose(res["cmc"], [0, 1, 1, 1])


def test_same_as_torchreid_formula_without_ties():
    """torchreid's eval_market1501 logic, restated with numpy argsort (no ties in the data)."""
    rng = np.random.default_rng(11)
    d, qp, gp, qc, gc = random_problem(rng, 50, 400, 15, 6, junk=0.0)
    idx = np.argsort(d, axis=1)
    matches = (gp[idx] == qp[:, None]).astype(np.int32)
    all_ap, all_cmc = [], []
    for q in range(len(qp)):
        keep = ~((gp[idx[q]] == qp[q]) & (gc[idx[q]] == qc[q]))
        raw = matches[q][keep]
        if not raw.any():
            continue
        c = raw.cumsum()
        c[c > 1] = 1
        all_cmc.append(c[:50])
        tmp = raw.cumsum() / (np.arange(len(raw)) + 1.0) * raw
        all_ap.append(tmp.sum() / raw.sum())
    res = evaluate_rank(d, qp, gp, qc, gc)
    assert res["mAP"] == pytest.approx(np.mean(all_ap), abs=1e-12)
    np.testing.assert_allclose(res["cmc"], np.mean(all_cmc, axis=0), atol=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "sqeuclidean"])
def test_feature_entry_point_equals_full_matrix(metric):
    rng = np.random.default_rng(3)
    _, qp, gp, qc, gc = random_problem(rng, 37, 211, 10, 4)
    centres = rng.standard_normal((11, 16))
    qf = centres[qp.clip(0)] + 0.8 * rng.standard_normal((37, 16))
    gf = centres[gp.clip(0)] + 0.8 * rng.standard_normal((211, 16))
    q, g = torch.tensor(qf), torch.tensor(gf)
    if metric == "cosine":
        q, g = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
        full = 1 - q @ g.T
    else:
        full = torch.cdist(q, g) ** (2 if metric == "sqeuclidean" else 1)
    ref = evaluate_rank(full.numpy(), qp, gp, qc, gc)
    res = evaluate_features(qf.astype(np.float64), gf.astype(np.float64), qp, gp, qc, gc,
                            metric=metric, chunk_elements=500)
    assert res["mAP"] == pytest.approx(ref["mAP"], abs=1e-9)
    np.testing.assert_allclose(res["cmc"], ref["cmc"])
    assert 0.3 < res["mAP"] <= 1.0          # structured features: far better than chance


def test_torch_input_fp16_and_small_gallery_max_rank():
    rng = np.random.default_rng(4)
    d, qp, gp, qc, gc = random_problem(rng, 10, 30, 5, 3, junk=0.0)
    res = evaluate_rank(torch.tensor(d, dtype=torch.float16), torch.tensor(qp), gp, qc, gc, max_rank=50)
    assert len(res["cmc"]) == 30            # cut to the gallery size, like torchreid
    ref = slow_reference(d.astype(np.float16).astype(np.float32), qp, gp, qc, gc, max_rank=50)
    assert res["mAP"] == pytest.approx(ref[0], abs=1e-12)


def test_bad_inputs_give_clear_errors():
    d = np.random.default_rng(0).random((3, 4))
    with pytest.raises(EvaluationError, match="q_pids has 2 entries"):
        evaluate_rank(d, [1, 2], [1, 2, 3, 4], [0, 0, 0], [1, 1, 1, 1])
    with pytest.raises(EvaluationError, match="no query has a positive"):
        evaluate_rank(d, [7, 8, 9], [1, 2, 3, 4], [0, 0, 0], [1, 1, 1, 1])
    bad = d.copy()
    bad[1, 2] = np.nan
    with pytest.raises(EvaluationError, match="NaN"):
        evaluate_rank(bad, [1, 2, 3], [1, 2, 3, 4], [0, 0, 0], [1, 1, 1, 1])
    with pytest.raises(EvaluationError, match="unknown metric"):
        evaluate_features(d, d, [1, 2, 3], [1, 2, 3], [0, 0, 0], [1, 1, 1], metric="manhattan")


@pytest.mark.parametrize("sparse_limit,cells", [(0.0, 3), (0.0, 2048), (2.0, 2048)])
@pytest.mark.parametrize("ties", [False, True])
def test_sparse_and_grid_paths_each_match_the_loop(monkeypatch, sparse_limit, cells, ties):
    """Force one path (0: always the grid, 2: always the sparse compare); a 3-cell grid puts
    many negatives in a positive's cell, exercising the exact in-cell comparison."""
    rng = np.random.default_rng(9)
    problem = random_problem(rng, 30, 250, 6, 3, ties=ties)
    mAP, mINP, cmc = slow_reference(*problem)
    monkeypatch.setattr(rank_mod, "SPARSE_LIMIT", sparse_limit)
    monkeypatch.setattr(rank_mod, "GRID_CELLS", cells)
    res = evaluate_rank(*problem, chunk_elements=2000)
    assert res["mAP"] == pytest.approx(mAP, abs=1e-12)
    assert res["mINP"] == pytest.approx(mINP, abs=1e-12)
    np.testing.assert_allclose(res["cmc"], cmc, atol=1e-12)


def test_distance_chunks_cover_all_queries_in_order():
    rng = np.random.default_rng(2)
    q = torch.nn.functional.normalize(torch.randn(23, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    g = torch.nn.functional.normalize(torch.randn(17, 5, generator=torch.Generator().manual_seed(1)), dim=1)
    parts = list(rank_mod.distance_chunks(q, g, "cosine", chunk_elements=40, block_elements=120))
    assert [p[0].start for p in parts] == list(range(0, 23, 2)) and parts[-1][0].stop == 23
    np.testing.assert_allclose(torch.cat([p[1] for p in parts]).numpy(), (1 - q @ g.T).numpy(), atol=1e-6)
    del rng
