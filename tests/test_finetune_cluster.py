"""Cluster Contrast parts: DBSCAN labels on planted clusters, centroids, the cluster memory's loss
and its hard / plain updates against slow loops, and the P x K cluster sampler."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cion.errors import CionError
from cion.finetune.cluster import ClusterMemory, cluster_centroids, cluster_dbscan
from cion.finetune.cluster_sampler import ClusterSampler
from cion.finetune.jaccard import jaccard_distance


# ---- DBSCAN -------------------------------------------------------------------------------------
def planted(n_clusters=10, size=12, d=24, outliers=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)) * 3
    x = np.concatenate([np.repeat(centres, size, 0) + 0.3 * rng.standard_normal((n_clusters * size, d)),
                        rng.standard_normal((outliers, d)) * 3])
    truth = np.concatenate([np.repeat(np.arange(n_clusters), size), -np.ones(outliers, int)])
    perm = rng.permutation(len(x))
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x[perm].astype(np.float32), truth[perm]


def test_dbscan_recovers_planted_clusters():
    x, truth = planted()
    labels = cluster_dbscan(jaccard_distance(x, k1=30, k2=6), eps=0.6, min_samples=4)
    assert labels.dtype == np.int64 and labels.shape == truth.shape
    for c in range(truth.max() + 1):                             # one label per planted cluster
        got = set(labels[truth == c])
        assert len(got) == 1 and -1 not in got
    assert labels.max() + 1 == truth.max() + 1                   # and no label shared by two
    # planted outliers never form a cluster of their own (above); some are left out, others
    # join a cluster as border points (the query expansion over k2 neighbours pulls them in)
    assert (labels[truth == -1] == -1).any()


def test_dbscan_dense_hand_made():
    # points 0-3 mutually at 0.1, point 4 at 0.5 from 0 only, point 5 alone
    d = np.ones((6, 6), np.float32)
    d[:4, :4] = 0.1
    d[0, 4] = d[4, 0] = 0.5
    np.fill_diagonal(d, 0)
    assert cluster_dbscan(d, eps=0.2, min_samples=4).tolist() == [0, 0, 0, 0, -1, -1]
    assert cluster_dbscan(d, eps=0.6, min_samples=4).tolist() == [0, 0, 0, 0, 0, -1]
    with pytest.raises(CionError, match="eps"):
        cluster_dbscan(jaccard_distance(planted()[0], 10, 3), eps=1.0)


# ---- centroids ----------------------------------------------------------------------------------
def test_centroids_against_loop():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 5)).astype(np.float32)
    y = rng.integers(-1, 4, 30)
    y[:4] = [0, 1, 2, 3]
    ref = np.stack([x[y == c].mean(0) / np.linalg.norm(x[y == c].mean(0)) for c in range(4)])
    got = cluster_centroids(x, y)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert np.allclose(got, ref, atol=1e-6)
    got_t = cluster_centroids(torch.from_numpy(x), torch.from_numpy(y))
    assert isinstance(got_t, torch.Tensor) and torch.allclose(got_t, torch.from_numpy(ref), atol=1e-6)
    with pytest.raises(CionError, match="no member"):
        cluster_centroids(x, np.where(y == 2, 3, y))
    with pytest.raises(CionError, match="outlier"):
        cluster_centroids(x, -np.ones(30, int))


# ---- memory -------------------------------------------------------------------------------------
def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def test_memory_loss_is_cross_entropy_over_scaled_similarities():
    mem = ClusterMemory(8, temp=0.05)
    cent = _unit(5, 8, seed=1)
    mem.reset(cent * 3)                                          # renormalised
    f = _unit(6, 8, seed=2).requires_grad_(True)
    y = torch.tensor([0, 4, 4, 2, 1, 0])
    loss = mem(f, y)
    ref = -torch.log_softmax(f.detach() @ cent.T / 0.05, 1)[torch.arange(6), y].mean()
    assert torch.allclose(loss, ref, atol=1e-5)
    loss.backward()
    assert f.grad is not None and not mem.features.requires_grad
    with pytest.raises(CionError, match="targets"):
        mem(f, torch.tensor([0, 5, 0, 0, 0, 0]))


def hard_reference(mem, x, y, m):
    """The public code's loop: per cluster in the batch, its least similar instance."""
    mem = mem.clone()
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        sims = x[idx] @ mem[c]
        hard = x[idx[int(torch.argmin(sims))]]
        mem[c] = m * mem[c] + (1 - m) * hard
        mem[c] /= mem[c].norm()
    return mem


def plain_reference(mem, x, y, m):
    mem = mem.clone()
    for xi, c in zip(x, y.tolist()):
        mem[c] = m * mem[c] + (1 - m) * xi
        mem[c] /= mem[c].norm()
    return mem


@pytest.mark.parametrize("mode,ref", [("hard", hard_reference), ("plain", plain_reference)])
def test_memory_updates_match_loops(mode, ref):
    cent = _unit(7, 16, seed=3)
    x = _unit(20, 16, seed=4)
    y = torch.tensor([0, 3, 3, 3, 6, 0, 1, 3, 6, 6, 0, 2, 2, 3, 0, 1, 6, 3, 0, 2])
    mem = ClusterMemory(16, 7, momentum=0.2, update=mode)
    mem.reset(cent)
    mem.update(x, y)
    expected = ref(cent, x, y, 0.2)
    assert torch.allclose(mem.features, expected, atol=1e-6)
    assert torch.equal(mem.features[[4, 5]], cent[[4, 5]])       # clusters not in the batch
    # the two variants differ (the test would catch one standing in for the other)
    other = (plain_reference if mode == "hard" else hard_reference)(cent, x, y, 0.2)
    assert (other - expected).abs().max() > 1e-3


def test_memory_state_dict_resizes():
    a = ClusterMemory(4, 3)
    a.reset(_unit(9, 4, seed=5))
    b = ClusterMemory(4, 2)
    b.load_state_dict(a.state_dict())
    assert b.num_clusters == 9 and torch.equal(a.features, b.features)
    assert "features" in a.state_dict()


# ---- sampler ------------------------------------------------------------------------------------
def sampler_data(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(12), rng.integers(1, 9, 12))
    labels[rng.random(len(labels)) < 0.1] = -1                   # outliers
    cams = rng.integers(0, 4, len(labels))
    return labels, cams


def test_sampler_batches_are_p_groups_of_k():
    labels, cams = sampler_data()
    s = ClusterSampler(labels, batch_size=24, k=4, steps=7, cams=cams, seed=3)
    batches = list(s)
    assert len(batches) == 7 and s.p == 6
    n_clusters = len(set(labels) - {-1})
    first_round = []
    for b in batches:
        rows = np.array([r for r, _, _ in b])
        lab = np.array([lb for _, _, lb in b])
        assert len(rows) == 24 and np.array_equal(labels[rows], lab) and (lab >= 0).all()
        groups = lab.reshape(6, 4)
        assert (groups == groups[:, :1]).all()                   # K images of one cluster
        first_round.extend(groups[:, 0].tolist())
    # the first round visits every cluster once before any repeats
    assert sorted(first_round[:n_clusters]) == sorted(set(labels) - {-1})


def test_sampler_prefers_other_cameras():
    # cluster 0: 1 image of camera 0, 9 of camera 1; cluster 1: all camera 2; cluster 2: no cameras
    labels = np.array([0] * 10 + [1] * 6 + [2] * 5)
    cams = np.array([0] + [1] * 9 + [2] * 6 + [-1] * 5)
    s = ClusterSampler(labels, batch_size=12, k=4, steps=30, cams=cams, seed=0)
    seen_anchor_cam0 = 0
    for b in s:
        rows = np.array([r for r, _, _ in b]).reshape(3, 4)
        for g in rows:
            anchor, rest = g[0], g[1:]
            if labels[anchor] == 0:
                if cams[anchor] == 0:
                    seen_anchor_cam0 += 1
                    assert (cams[rest] == 1).all()
                else:                                           # other camera: only row 0
                    assert (rest == 0).all()
            else:                                               # no other camera: other images
                assert (rest != anchor).all() and len(set(rest.tolist())) == 3
    assert seen_anchor_cam0 > 0


def test_sampler_deterministic_and_resumable():
    labels, cams = sampler_data(1)
    mk = lambda **kw: ClusterSampler(labels, 16, 4, steps=9, cams=cams, **kw)
    a = mk(seed=5)
    full = {}
    for epoch in (0, 1):
        a.set_epoch(epoch)
        full[epoch] = list(a)
    assert full[0] == [mk(seed=5).batch(0, i) for i in range(9)]
    assert full[0] != full[1] and full[0] != list(mk(seed=6))
    # resume in the middle of epoch 1 from a saved state
    b = mk(seed=5)
    b.set_position(1, 4)
    state = b.state_dict()
    c = mk(seed=0)
    c.load_state_dict(state)
    assert len(c) == 5 and list(c) == full[1][4:]
    # augmentation seeds differ between samples
    seeds = [sd for batch in full[0] for _, sd, _ in batch]
    assert len(set(seeds)) == len(seeds)


def test_sampler_ddp_slices_partition_the_global_batch():
    labels, cams = sampler_data(2)
    whole = ClusterSampler(labels, 16, 4, steps=3, cams=cams, seed=1)
    parts = [ClusterSampler(labels, 16, 4, steps=3, cams=cams, seed=1, rank=r, world_size=3)
             for r in range(3)]
    for step in range(3):
        assert sum((p.batch(0, step) for p in parts), []) == whole.batch(0, step)


def test_sampler_bad_input():
    with pytest.raises(CionError, match="outlier"):
        ClusterSampler(-np.ones(5, int), 8, 4, steps=1)
    with pytest.raises(CionError, match="multiple"):
        ClusterSampler(np.zeros(5, int), 10, 4, steps=1)
    one = ClusterSampler(np.array([-1, 0, 1, 1]), 8, 4, steps=2)   # single-image cluster: K copies
    for b in one:
        rows = np.array([r for r, _, _ in b]).reshape(2, 4)
        assert all(len(set(g.tolist())) == 1 or set(g.tolist()) <= {2, 3} for g in rows)
