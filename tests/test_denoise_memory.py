"""Denoising memory does not depend on how many images level 1 excludes (docs/robustness.md).

Level 2 reads the excluded samples back a tile at a time (never one (E, D) array) and adds the
reallocated ones to the level-2 sums as it places them; level 1 may keep small tracklets' Gram
matrices instead of re-reading members. Both must give the results of the plain computation.
"""
from __future__ import annotations

import numpy as np

from cion.denoise import denoise, reference_denoise
from cion.denoise.segments import segment_sums, unit_rows
from cion.denoise.video import reallocate


def _excluded_world(seed=0, videos=6, per_video=5, D=16, E=400):
    rng = np.random.default_rng(seed)
    T = videos * per_video
    vtstart = np.arange(0, T + 1, per_video)
    S = rng.normal(size=(T, D))
    cnt = rng.integers(1, 4, T)
    e_track = rng.integers(0, T, E)
    e_video = e_track // per_video
    X = S[e_track] / cnt[e_track, None] + 0.3 * rng.normal(size=(E, D))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, e_track, e_video, S, cnt, vtstart


def test_reallocation_streams_tiles_and_updates_sums_like_one_sum():
    X, e_track, e_video, S, cnt, vtstart = _excluded_world()
    U1, key = unit_rows(S, cnt), np.arange(len(S)) * 10
    plain = reallocate(X, e_track, e_video, U1, key, vtstart, 0.9, chunk=8)
    asked = []

    def read(k):
        asked.append(len(k))
        return X[k]

    sums = S.copy()
    streamed = reallocate(read, e_track, e_video, U1, key, vtstart, 0.9, chunk=8, tile=16,
                          threads=2, sums=sums)
    assert (streamed == plain).all() and (plain >= 0).sum() > 50 and (plain < 0).any()
    assert max(asked) <= 16 and sum(asked) == len(X)        # bounded reads, each sample once
    ok = plain >= 0
    expect = S.copy()
    u, inv = np.unique(plain[ok], return_inverse=True)
    expect[u] += segment_sums(X[ok], inv, len(u))
    assert np.allclose(sums, expect, rtol=0, atol=1e-12)


def test_gram_path_gives_the_same_partition_as_rereading_members():
    rng = np.random.default_rng(3)
    D, rows, vid, trk = 64, [], [], []
    for t in range(60):                                       # tracklets of 1..40 images
        n = int(rng.integers(1, 41))
        c = rng.normal(size=D) * (0.2 if t % 3 else 1.0)      # some loose, most excluded a lot
        rows.append(c + rng.normal(size=(n, D)))
        vid += [f"v{t // 6}"] * n
        trk += [t] * n
    X = np.concatenate(rows).astype(np.float32)               # cap: 64 * 4 // 8 = 32 members
    a = denoise(X, vid, trk, sigma_cst=0.5, sigma_drm=0.3, noise_stats=False)
    b = denoise(X, vid, trk, sigma_cst=0.5, sigma_drm=0.3, noise_stats=False, gram_max=0)
    assert (a.identity == b.identity).all() and (a.status_code == b.status_code).all()
    by = {s["level"]: s for s in a.stats}
    assert by["tracklet"]["excluded"] > len(X) // 3 and by["video"]["reallocated"] > 0
    ref_id, ref_status = reference_denoise(X[:400], vid[:400], trk[:400], sigma_cst=0.5,
                                           sigma_drm=0.3)
    c = denoise(X[:400], vid[:400], trk[:400], sigma_cst=0.5, sigma_drm=0.3, noise_stats=False)
    assert (c.identity == ref_id).all() and (c.status == ref_status).all()
