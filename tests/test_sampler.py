"""Identity P x K sampler: groups, ranks, seeds, any batch size, curriculum, resume."""
from __future__ import annotations

import numpy as np
import pytest

from cion.data.sampler import (IdentityBatchSampler, check_curriculum, default_curriculum,
                               k_at_epoch)
from cion.errors import CionError


def _labels(n_ids=12, per=(1, 2, 3, 5, 8), seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.choice(per, n_ids)
    labels = np.repeat(np.arange(n_ids) * 10, counts)
    return rng.permutation(np.concatenate([labels, [-1, -1, -1]]))  # -1 rows are skipped


def test_default_curriculum_and_lookup():
    assert default_curriculum(100) == [[0, 2], [40, 4], [60, 6], [80, 8]]
    cur = default_curriculum(100)
    assert [k_at_epoch(cur, e) for e in (0, 39, 40, 59, 60, 79, 80, 99)] == [2, 2, 4, 4, 6, 6, 8, 8]
    assert default_curriculum(10) == [[0, 2], [4, 4], [6, 6], [8, 8]]
    assert default_curriculum(1) == [[0, 2], [1, 8]]              # a 1-epoch run uses K = 2
    with pytest.raises(CionError):
        check_curriculum([[1, 2]])
    with pytest.raises(CionError):
        check_curriculum([[0, 2], [0, 4]])


@pytest.mark.parametrize("k", [1, 2, 4])
def test_groups_of_k_and_replacement(k):
    labels = _labels()
    s = IdentityBatchSampler(labels, batch_size=4 * k, curriculum=[[0, k]], seed=3)
    plan = s.plan(0)
    assert plan.k == k
    # every chunk of K consecutive rows is one identity, and the labels are the rows' labels
    assert np.all(plan.labels == labels[plan.rows])
    chunks = plan.labels.reshape(-1, k)
    assert np.all(chunks == chunks[:, :1])
    assert not np.any(labels[plan.rows] < 0)
    # identities with >= K images never repeat an image within the epoch; smaller ones are
    # drawn with replacement (one chunk)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    for ident, n in zip(ids, counts):
        used = plan.rows[plan.labels == ident]
        if n >= k:
            assert len(np.unique(used)) == len(used) == (n // k) * k
        else:
            assert len(used) == k and set(used) <= set(np.flatnonzero(labels == ident))


def test_seeded_and_epoch_dependent():
    labels = _labels()
    a = IdentityBatchSampler(labels, 6, [[0, 2]], seed=1)
    b = IdentityBatchSampler(labels, 6, [[0, 2]], seed=1)
    c = IdentityBatchSampler(labels, 6, [[0, 2]], seed=2)
    assert list(a) == list(b)
    assert list(a) != list(c)
    assert not np.array_equal(a.plan(0).rows, a.plan(1).rows)
    assert np.array_equal(a.plan(1).seeds, b.plan(1).seeds)
    assert len(np.unique(a.plan(0).seeds)) == a.plan(0).seeds.size


@pytest.mark.parametrize("batch_size,world", [(8, 2), (7, 2), (9, 3), (5, 1)])
def test_ranks_disjoint_and_global_batch_independent_of_world(batch_size, world):
    labels = _labels(n_ids=20)
    one = IdentityBatchSampler(labels, batch_size, [[0, 2]], seed=0)
    ranks = [IdentityBatchSampler(labels, batch_size, [[0, 2]], seed=0, rank=r, world_size=world)
             for r in range(world)]
    steps = one.steps_in_epoch(0)
    assert steps == (sum(max(1, c // 2) * 2 for c in np.unique(labels[labels >= 0],
                                                                   return_counts=True)[1]) // batch_size)
    for step in range(steps):
        parts = [r.batch(0, step) for r in ranks]
        assert sum(len(p) for p in parts) == batch_size            # any batch size
        assert [x for p in parts for x in p] == one.batch(0, step)  # same global batch
        positions = [set(range(*r.local_slice())) for r in ranks]
        assert set.union(*positions) == set(range(batch_size))
        assert sum(len(p) for p in positions) == batch_size          # disjoint slices


def test_curriculum_changes_k_and_resume_position():
    labels = _labels(n_ids=16)
    s = IdentityBatchSampler(labels, 8, [[0, 2], [2, 4]], seed=5)
    assert s.plan(1).k == 2 and s.plan(2).k == 4 and s.plan(3).k == 4
    s.set_position(2, 0)
    full = list(s)
    # a fresh sampler restored from a state dict mid-epoch continues identically
    s.set_position(2, 1)
    state = s.state_dict()
    t = IdentityBatchSampler(labels, 8, [[0, 99]], seed=0)   # wrong settings, overwritten
    t.load_state_dict(state)
    assert t.k() == 4 and list(t) == full[1:]
    assert len(t) == len(full) - 1


def test_errors():
    with pytest.raises(CionError, match="identity"):
        IdentityBatchSampler(np.full(5, -1), 2, [[0, 2]])
    with pytest.raises(CionError, match="batch size"):
        IdentityBatchSampler(np.arange(4), 64, [[0, 2]]).plan(0)
