"""Level 1, single-tracklet denoising (paper Eq. 4), vectorised over all tracklets.

Each round handles every still-active tracklet at once. For member ``x_i`` of tracklet ``t`` with
member sum ``S`` (``n`` members), the leave-one-out centroid is ``(S - x_i) / (n - 1)`` and

    d(x_i, c(t \\ x_i)) = 1 - (p_i - q_i) / sqrt(|S|^2 - 2 p_i + q_i),  p_i = <x_i, S>, q_i = |x_i|^2

so one dot product per member gives all deviations. Removing member ``m`` updates
``S -= x_m`` and ``p_i -= <x_i, x_m>``, so later rounds only touch tracklets that changed.
Where ``|S - x_i|`` is tiny compared with ``|S|`` (cancellation), the deviation is recomputed
from the explicit vector so the result equals the float64 literal transcription.
"""
from __future__ import annotations

import numpy as np

from cion.denoise.features import FeatureSource
from cion.denoise.reference import ZERO_NORM
from cion.denoise.segments import expand_ranges, segmented_argmax_first

#: explicit recomputation when |S - x|^2 < GUARD * (|S|^2 + 1)
_GUARD = 1e-6


def loo_deviation(p, q, SS, n, S_rows=None, x_rows=None):
    """Leave-one-out deviations from dot products (all arrays (K,) float64, ``n >= 2``).

    ``S_rows``/``x_rows`` (callables returning (k, D) arrays for a boolean mask) allow the exact
    recomputation of ill-conditioned entries; without them the closed form is used everywhere.
    """
    v2 = SS - 2.0 * p + q
    nv = np.sqrt(np.maximum(v2, 0.0))
    m1 = n - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = np.where(nv / m1 <= ZERO_NORM, 1.0, 1.0 - (p - q) / nv)
    if S_rows is not None:
        bad = v2 < _GUARD * (SS + 1.0)
        if bad.any():
            v = S_rows(bad) - x_rows(bad)
            x = x_rows(bad)
            nvb = np.sqrt(np.einsum("ij,ij->i", v, v))
            ipb = np.einsum("ij,ij->i", x, v)
            with np.errstate(divide="ignore", invalid="ignore"):
                dev[bad] = np.where(nvb / m1[bad] <= ZERO_NORM, 1.0, 1.0 - ipb / nvb)
    return dev


def _remove_members(src, order, tstart, S, SS, p, alive, rem_pos, rem_t, chunk, gram, goff, n0,
                    piece: int = 16384) -> None:
    """Take member ``rem_pos[k]`` out of tracklet ``rem_t[k]`` (one per tracklet): update its
    sum ``S``, ``SS = |S|^2`` and the dot products ``p`` of its remaining members.

    Tracklets with a Gram matrix look ``<x_i, x_m>`` up; the others read their members again.
    Removed members are handled ``piece`` at a time, so the (k, D) blocks in flight stay small
    however many tracklets lose a member in this round.
    """
    D = S.shape[1]
    upos, uown = expand_ranges(tstart[rem_t], tstart[rem_t + 1])
    ok = alive[upos]
    upos, uown = upos[ok], uown[ok]
    if gram is not None:                             # small tracklets: <x_i, x_m> from the Gram
        t_u = rem_t[uown]
        g = goff[t_u] >= 0
        tg, base = t_u[g], tstart[t_u[g]]
        p[upos[g]] -= gram[goff[tg] + (upos[g] - base) * n0[tg] + (rem_pos[uown[g]] - base)]
        upos, uown = upos[~g], uown[~g]
    for a in range(0, len(rem_t), piece):            # pieces of removed members
        b = min(a + piece, len(rem_t))
        xm = np.empty((b - a, D))

        def put(sl, blk, xm=xm):
            xm[sl] = blk

        src.for_chunks(order[rem_pos[a:b]], put, chunk)
        t = rem_t[a:b]                               # distinct: one removal per tracklet
        S[t] -= xm
        St = S[t]
        SS[t] = np.einsum("ij,ij->i", St, St)
        del St
        lo, hi = np.searchsorted(uown, [a, b])       # uown ascending: this piece's members
        if hi > lo:
            pu, po = upos[lo:hi], uown[lo:hi] - a

            def update(sl, blk, pu=pu, po=po, xm=xm):
                p[pu[sl]] -= np.einsum("ij,ij->i", blk, xm[po[sl]])

            src.for_chunks(order[pu], update, chunk)


def denoise_tracklets(src: FeatureSource, order: np.ndarray, tstart: np.ndarray,
                      S: np.ndarray, cnt: np.ndarray, p: np.ndarray, q: np.ndarray,
                      sigma_cst: float, chunk: int = 2048, progress=None, gram=None, goff=None):
    """Run Eq. 4 on every tracklet; updates ``S``, ``cnt``, ``p`` in place.

    Args:
        src: feature rows.
        order: (N,) manifest row of each sequence position (tracklets contiguous, rows ascending).
        tstart: (T+1,) tracklet segment starts in sequence positions.
        S: (T, D) float64 member sums; cnt: (T,) member counts.
        p: (N,) ``<x_i, S_t>`` per position; q: (N,) ``|x_i|^2``.
        sigma_cst: exclusion threshold (``>=`` excludes).
        gram, goff: optional member Gram matrices of small tracklets (see
            :func:`cion.denoise.pipeline.read_tracklet_sums`): their members' dot products with
            a removed member are looked up instead of read from the features again.

    Returns:
        ``(alive, excluded_positions, rounds)``: alive (N,) bool per position, the excluded
        positions (in the order they were removed), and the number of rounds.
    """
    n = len(order)
    n0 = np.diff(tstart)                             # original member counts (Gram layout)
    alive = np.ones(n, dtype=bool)
    SS = np.einsum("ij,ij->i", S, S)
    active = np.flatnonzero(cnt >= 2)
    removed_all = []
    rounds = 0
    while len(active):
        rounds += 1
        pos, own = expand_ranges(tstart[active], tstart[active + 1])
        keep = alive[pos]
        pos, own = pos[keep], own[keep]
        t_of = active[own]

        def s_rows(mask, t_of=t_of):
            return S[t_of[mask]]

        def x_rows(mask, pos=pos):
            return src.take(order[pos[mask]])

        dev = loo_deviation(p[pos], q[pos], SS[t_of], cnt[t_of].astype(np.float64),
                            s_rows, x_rows)
        first = segmented_argmax_first(dev, own)
        go = dev[first] >= sigma_cst
        rem_pos = pos[first[go]]
        rem_t = t_of[first[go]]
        if len(rem_t) == 0:
            break
        alive[rem_pos] = False
        removed_all.append(rem_pos)
        cnt[rem_t] -= 1
        _remove_members(src, order, tstart, S, SS, p, alive, rem_pos, rem_t, chunk, gram, goff, n0)
        src.release()
        active = rem_t[cnt[rem_t] >= 2]
        if progress is not None:
            progress(rounds, int(alive.size - alive.sum()))
    excluded = np.concatenate(removed_all) if removed_all else np.zeros(0, dtype=np.int64)
    return alive, excluded, rounds
