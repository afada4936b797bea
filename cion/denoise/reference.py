"""A slow, literal transcription of the CION denoising equations (Eq. 1-7), float64, Python loops.

This is the specification in executable form: the fast, vectorised pipeline
(:func:`cion.denoise.denoise`) must give the same partition and the same statuses on every input.
It is used by the tests and is kept readable rather than fast (O(M^2), loops everywhere); do not
use it on more than a few thousand images.

Rules where the paper (Sec. 3.2) is silent, fixed here:

* features are L2-normalised in float64; a centroid is the plain mean of its members;
  ``d(x, c) = 1 - <x, c> / |c|`` and ``d(c_i, c_j) = 1 - cos(c_i, c_j)``, both 1.0 when a
  centroid is (numerically) zero, i.e. ``|c| <= ZERO_NORM``;
* argmax / argmin ties (values within ``TIE_EPS``) go to the earliest manifest row;
* level 1 never empties a tracklet; level 2a uses the fixed level-1 centroids; level 2b
  recomputes centroids and takes the transitive closure of all pairs ``< sigma_drm`` within a
  video; level 3 slides over groups ordered by (video first appearance, group first row) with
  fixed level-2 centroids; identities are numbered by their first manifest row, discarded = -1.
"""
from __future__ import annotations

import numpy as np

#: a centroid whose norm is at most this counts as zero (its distance to anything is 1.0)
ZERO_NORM = 1e-9
#: distances closer than this to the extreme value count as ties (-> earliest manifest row)
TIE_EPS = 1e-9

LEVELS = ("tracklet", "video", "cross")


def _d_point(x: np.ndarray, c: np.ndarray) -> float:
    nc = float(np.sqrt(np.dot(c, c)))
    if nc <= ZERO_NORM:
        return 1.0
    return 1.0 - float(np.dot(x, c)) / nc


def _d_cent(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.sqrt(np.dot(a, a))), float(np.sqrt(np.dot(b, b)))
    if na <= ZERO_NORM or nb <= ZERO_NORM:
        return 1.0
    return 1.0 - float(np.dot(a, b)) / (na * nb)


class _UnionFind:
    def __init__(self, n):
        self.p = list(range(n))

    def find(self, a):
        while self.p[a] != a:
            self.p[a] = self.p[self.p[a]]
            a = self.p[a]
        return a

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[max(ra, rb)] = min(ra, rb)


def reference_denoise(features, video, tracklet, *, sigma_cst: float = 0.2,
                      sigma_drm: float = 0.18, range_half_width: int = 1000,
                      levels=LEVELS):
    """Literal Eq. 4-7. Returns ``(identity int64 (N,), status array of str (N,))``."""
    X = np.asarray(features, dtype=np.float64)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    video = [str(v) for v in video]
    tracklet = [int(t) for t in tracklet]
    n = len(X)

    # tracklets: members in manifest order; tracklets in order of their first row
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(tracklet[i], []).append(i)
    tracks = list(members.values())                  # ordered by first row
    track_video = [video[m[0]] for m in tracks]
    video_order: list[str] = []
    for v in video:
        if v not in video_order:
            video_order.append(v)

    kept = [list(m) for m in tracks]
    excluded: list[list[int]] = [[] for _ in tracks]

    # ---- level 1: Eq. 4 --------------------------------------------------------------
    if "tracklet" in levels:
        for k, A in enumerate(kept):
            while len(A) >= 2:
                devs = []
                for i in A:
                    rest = [j for j in A if j != i]
                    devs.append(_d_point(X[i], X[rest].mean(axis=0)))
                best = max(devs)
                m = next(idx for idx, dv in enumerate(devs) if dv >= best - TIE_EPS)
                if devs[m] >= sigma_cst:
                    excluded[k].append(A.pop(m))
                else:
                    break

    status = ["kept"] * n
    realloc_in: list[list[int]] = [[] for _ in tracks]
    groups: list[list[int]] = [[k] for k in range(len(tracks))]   # level-2 groups of tracklets

    if "video" in levels:
        # ---- level 2a: Eq. 5, fixed level-1 centroids ------------------------------
        cent1 = [X[A].mean(axis=0) for A in kept]
        for k in range(len(tracks)):
            for i in excluded[k]:
                cands = [r for r in range(len(tracks)) if r != k and track_video[r] == track_video[k]]
                if not cands:
                    status[i] = "discarded"
                    continue
                dists = [_d_point(X[i], cent1[r]) for r in cands]
                best = min(dists)
                tied = [r for r, dv in zip(cands, dists) if dv <= best + TIE_EPS]
                r = min(tied, key=lambda r: min(kept[r]))       # earliest manifest row
                if _d_point(X[i], cent1[r]) < sigma_cst:
                    realloc_in[r].append(i)
                    status[i] = "reallocated"
                else:
                    status[i] = "discarded"
        # ---- level 2b: Eq. 6, recomputed centroids, closure within the video -------
        cent2 = [X[kept[k] + realloc_in[k]].mean(axis=0) for k in range(len(tracks))]
        uf = _UnionFind(len(tracks))
        for p in range(len(tracks)):
            for q in range(p + 1, len(tracks)):
                if track_video[p] == track_video[q] and _d_cent(cent2[p], cent2[q]) < sigma_drm:
                    uf.union(p, q)
        comp: dict[int, list[int]] = {}
        for k in range(len(tracks)):
            comp.setdefault(uf.find(k), []).append(k)
        groups = list(comp.values())
    else:
        for k in range(len(tracks)):
            for i in excluded[k]:
                status[i] = "discarded"

    def group_rows(g):
        return [i for k in g for i in kept[k] + realloc_in[k]]

    identities: list[list[int]] = [group_rows(g) for g in groups]
    if "cross" in levels:
        # ---- level 3: Eq. 7, sliding range over the ultra-long sequence ------------
        seq = sorted(range(len(groups)),
                     key=lambda g: (video_order.index(track_video[groups[g][0]]),
                                    min(group_rows(groups[g]))))
        cents = [X[group_rows(groups[g])].mean(axis=0) for g in seq]
        uf = _UnionFind(len(seq))
        for i in range(len(seq)):
            for c in range(max(0, i - range_half_width), min(len(seq), i + range_half_width + 1)):
                if c != i and _d_cent(cents[i], cents[c]) < sigma_drm:
                    uf.union(i, c)
        comp = {}
        for pos in range(len(seq)):
            comp.setdefault(uf.find(pos), []).extend(group_rows(groups[seq[pos]]))
        identities = list(comp.values())

    identity = np.full(n, -1, dtype=np.int64)
    for new_id, rows in enumerate(sorted(identities, key=min)):
        for i in rows:
            identity[i] = new_id
    return identity, np.array(status, dtype=object)


def reference_noise(features, labels, *, sigma_cst: float = 0.2, sigma_drm: float = 0.18) -> float:
    """Literal Eq. 1-3 over the rows with ``labels >= 0``: ``n_S`` (ordered pairs i != j)."""
    X = np.asarray(features, dtype=np.float64)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    ids = sorted({int(v) for v in labels if v >= 0})
    if not ids:
        return 0.0
    cents, total = [], 0
    for k in ids:
        rows = [i for i in range(len(X)) if labels[i] == k]
        c = X[rows].mean(axis=0)
        cents.append(c)
        r = max(_d_point(X[i], c) for i in rows)
        total += int(r >= sigma_cst)
    for i in range(len(ids)):
        for j in range(len(ids)):
            if i != j and _d_cent(cents[i], cents[j]) < sigma_drm:
                total += 1
    return total / len(ids)
