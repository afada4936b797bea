"""Level 2, single-video denoising: reallocation (paper Eq. 5) and merging (Eq. 6).

Both steps only compare things inside one video. Tracklets of a video are contiguous, so runs of
consecutive videos holding about ``chunk`` tracklets together are handled with one plain 2-D
matrix product (float64 BLAS) and a same-video mask; a video larger than a chunk is handled
alone, tiled by rows. Cost ``O(T * chunk * D)``; no Python loop over samples or pairs.
"""
from __future__ import annotations

import numpy as np

from cion.denoise.parallel import pmap
from cion.denoise.reference import TIE_EPS


def video_chunks(vtstart: np.ndarray, chunk: int = 64) -> list[tuple[int, int]]:
    """Runs ``(v0, v1)`` of consecutive videos with about ``chunk`` tracklets in all.

    A run is cut where ``vtstart // chunk`` changes, so it holds at most ``chunk`` tracklets plus
    its last video; one iteration per run in the callers.
    """
    V = len(vtstart) - 1
    if V <= 0:
        return []
    cid = vtstart[:-1] // chunk
    starts = np.flatnonzero(np.r_[True, cid[1:] != cid[:-1]])
    ends = np.r_[starts[1:], V]
    return list(zip(starts.tolist(), ends.tolist()))


def reallocate(read, e_track: np.ndarray, e_video: np.ndarray, U1: np.ndarray,
               key: np.ndarray, vtstart: np.ndarray, sigma_cst: float,
               chunk: int = 64, tile: int = 4096, threads: int = 1,
               sums: np.ndarray | None = None) -> np.ndarray:
    """Eq. 5 with the fixed level-1 centroids, reading the excluded samples tile by tile.

    Args:
        read: ``read(k)`` -> (len(k), D) float64 normalised features of the excluded samples
            ``k`` (indices into ``0..E-1``), e.g. gathered from the memory map; or the (E, D)
            array itself (small inputs). At most ``tile`` samples are read at a time per thread,
            so memory does not grow with the number of excluded samples E.
        e_track: (E,) the tracklet each was excluded from; e_video: (E,) its video.
        U1: (T, D) unit level-1 centroids (zero rows for zero centroids).
        key: (T,) first manifest row of each level-1 tracklet (tie-break: earliest).
        vtstart: (V+1,) tracklets of video v are ``vtstart[v]:vtstart[v+1]``.
        sigma_cst: a sample is reallocated only if its distance is ``< sigma_cst``.
        threads: runs of videos handled in parallel.
        sums: optional (T, D) float64 member sums; each reallocated sample's feature is added
            to its target's row in place (in the samples' order, as one sum per target), which
            turns level-1 sums into the level-2 sums without holding the samples.

    Returns:
        (E,) int64 target tracklet, -1 where the sample is discarded.
    """
    E = len(e_track)
    target = np.full(E, -1, dtype=np.int64)
    if E == 0:
        return target
    if not callable(read):
        feats = read
        read = lambda k: feats[k]                    # noqa: E731
    o = np.argsort(e_video, kind="stable")
    ev = e_video[o]
    tvideo = np.repeat(np.arange(len(vtstart) - 1), np.diff(vtstart))
    big = np.iinfo(np.int64).max

    def run(vv):                                     # one run of videos; writes its own samples
        v0, v1 = vv
        q0, q1 = np.searchsorted(ev, [v0, v1])
        t0, t1 = int(vtstart[v0]), int(vtstart[v1])
        if q0 == q1 or t1 - t0 < 2:
            return
        K = U1[t0:t1]
        kv, kkey = tvideo[t0:t1], key[t0:t1]
        added = hit = None                           # (t1 - t0, D) sums of the samples moved in
        step = max(1, min(tile, (1 << 24) // (t1 - t0)))
        for a in range(q0, q1, step):                # tiles of queries (bounded memory)
            ee = o[a:min(a + step, q1)]
            xe = read(ee)                            # (q, D) float64
            d = 1.0 - xe @ K.T                       # (q, k)
            bad = (kv[None, :] != e_video[ee][:, None]) | \
                  (np.arange(t0, t1)[None, :] == e_track[ee][:, None])
            d[bad] = np.inf
            best = d.min(axis=1, keepdims=True)
            tied = (d <= best + TIE_EPS) & ~bad
            pick = np.where(tied, kkey[None, :], big).argmin(axis=1)
            dist = d[np.arange(len(ee)), pick]
            ok = dist < sigma_cst                     # inf (nobody else in the video) fails
            target[ee[ok]] = t0 + pick[ok]
            if sums is not None and ok.any():
                if added is None:
                    added = np.zeros((t1 - t0, sums.shape[1]))
                    hit = np.zeros(t1 - t0, dtype=bool)
                np.add.at(added, pick[ok], xe[ok])    # sequential: same order as one sum
                hit[pick[ok]] = True
        if added is not None:
            rows = np.flatnonzero(hit)
            sums[t0 + rows] += added[rows]           # only this run's tracklets (thread-safe)

    pmap(run, video_chunks(vtstart, chunk), threads)
    return target


def merge_pairs(U2: np.ndarray, vtstart: np.ndarray, sigma_drm: float, chunk: int = 64,
                tile: int = 2048, threads: int = 1):
    """Eq. 6: all pairs of tracklets of one video with ``1 - cos < sigma_drm``.

    Args:
        U2: (T, D) unit level-2 centroids (after reallocation), float64.
        vtstart: (V+1,) video segments over tracklets.
        threads: runs of videos handled in parallel.

    Returns:
        ``(i, j)`` int64 arrays of linked tracklet pairs (i < j).
    """
    tvideo = np.repeat(np.arange(len(vtstart) - 1), np.diff(vtstart))

    def run(vv):                                     # one run of videos -> its pairs
        v0, v1 = vv
        t0, t1 = int(vtstart[v0]), int(vtstart[v1])
        out = []
        if t1 - t0 < 2:
            return out
        K = U2[t0:t1]
        step = max(1, min(tile, (1 << 24) // (t1 - t0)))
        for a in range(t0, t1, step):                # row tiles (only for very large videos)
            b = min(a + step, t1)
            d = 1.0 - U2[a:b] @ K.T
            rows = np.arange(a, b)[:, None]
            cols = np.arange(t0, t1)[None, :]
            same = tvideo[a:b][:, None] == tvideo[t0:t1][None, :]
            ii, jj = np.nonzero((d < sigma_drm) & (cols > rows) & same)
            out.append((a + ii, t0 + jj))
        return out

    parts = [x for r in pmap(run, video_chunks(vtstart, chunk), threads) for x in r]
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return (np.concatenate([x[0] for x in parts]).astype(np.int64),
            np.concatenate([x[1] for x in parts]).astype(np.int64))
