"""Progressive multi-level denoising: tracklets -> cross-video identities (paper Sec. 3.2).

>>> from cion.denoise import denoise
>>> identity, status = denoise("features.npy", df["video"], df["tracklet"])

Levels (any subset, always run in this order): ``tracklet`` (Eq. 4), ``video`` (Eq. 5-6),
``cross`` (Eq. 7). The exact rules where the paper is silent (ordering, ties, numbering) are those
of the literal transcription :mod:`cion.denoise.reference`, which the tests hold this fast
implementation to. Features are read block by block from a memory map; memory is a few arrays of
(tracklets x D) float64 plus blocks, never a full copy of the features.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cion.denoise.cross import ORDERS, cross_links
from cion.denoise.features import FeatureSource, prepare_features
from cion.denoise.noise import noise_from_dots
from cion.denoise.parallel import single_threaded_blas
from cion.denoise.reference import LEVELS
from cion.denoise.segments import (components, number_by_first_row, run_starts,
                                   segment_sums, unit_rows)
from cion.denoise.tracklet import denoise_tracklets
from cion.denoise.video import merge_pairs, reallocate
from cion.errors import CionError

STATUS_NAMES = ("kept", "reallocated", "discarded")


@dataclass
class DenoiseResult:
    """What :func:`denoise` returns; unpacks as ``identity, status = result``.

    Attributes:
        identity: (N,) int64 identity per manifest row, 0..M-1 numbered by first row, -1 discarded.
        status: (N,) object array of ``kept`` / ``reallocated`` / ``discarded``.
        status_code: (N,) int8 index into :data:`STATUS_NAMES`.
        stats: one dict per stage (``raw`` then each level run): identities, images kept /
            reallocated / discarded, noise (``n_S``, ``n_cst``, ``n_drm_pairs``), seconds.
        params: the thresholds and options used.
    """
    identity: np.ndarray
    status_code: np.ndarray
    stats: list = field(default_factory=list)
    params: dict = field(default_factory=dict)

    @property
    def status(self) -> np.ndarray:
        return np.array(STATUS_NAMES, dtype=object)[self.status_code]

    def __iter__(self):
        yield self.identity
        yield self.status


def parse_levels(levels) -> tuple[str, ...]:
    """``"tracklet,video,cross"`` or an iterable of names -> canonical tuple (paper order)."""
    if isinstance(levels, str):
        names = [s.strip() for s in levels.split(",") if s.strip()]
    else:
        names = [str(s).strip() for s in levels]
    unknown = [s for s in names if s not in LEVELS]
    if unknown:
        raise CionError(f"unknown denoising level(s) {unknown}; choose from {list(LEVELS)} "
                        "(comma-separated, e.g. --levels tracklet,video,cross)")
    return tuple(s for s in LEVELS if s in names)


class _Phases:
    """Optional rich progress bars, one per phase."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn)
            self.bar = Progress(TextColumn("{task.description:<28}"), BarColumn(),
                                TextColumn("{task.completed:>12,.0f}"),
                                TimeElapsedColumn(), transient=False)
            self.bar.start()

    def phase(self, name: str, total: float | None, advance: bool = False):
        """A progress callback: ``tick(done)`` sets the count (``tick(n)`` adds ``n`` when
        ``advance``); ``total=None`` shows a count without a bar (e.g. rounds)."""
        if self.bar is None:
            return lambda done: None
        task = self.bar.add_task(name, total=total)
        if advance:
            return lambda n: self.bar.update(task, advance=n)
        return lambda done: self.bar.update(task, completed=done)

    def close(self):
        if self.bar is not None:
            self.bar.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _layout(video, tracklet, n: int):
    """Sequence layout: videos by first appearance, tracklets by first row, rows ascending."""
    video = np.asarray(video)
    tracklet = np.asarray(tracklet)
    if len(video) != n or len(tracklet) != n:
        raise CionError(f"features have {n} rows but video has {len(video)} and tracklet "
                        f"{len(tracklet)} entries; they must be the same rows in the same order")
    vcode, vuniq = pd.factorize(video, sort=False)
    tcode, tuniq = pd.factorize(tracklet, sort=False)
    if (vcode < 0).any() or (tcode < 0).any():
        raise CionError("video / tracklet contain missing values; give every row a value")
    T = len(tuniq)
    first_row = np.full(T, n, dtype=np.int64)
    np.minimum.at(first_row, tcode, np.arange(n))
    tv = vcode[first_row]
    if (tv[tcode] != vcode).any():
        bad = int(tuniq[tcode[np.flatnonzero(tv[tcode] != vcode)[0]]])
        raise CionError(f"tracklet {bad} appears in more than one video; tracklet ids must be "
                        "unique across the whole manifest")
    torder = np.lexsort((np.arange(T), tv))            # by (video first appearance, first row)
    tnew = np.empty(T, dtype=np.int64)
    tnew[torder] = np.arange(T)
    tid_row = tnew[tcode]
    order = np.lexsort((np.arange(n), tid_row))         # positions -> manifest rows
    tid_pos = tid_row[order]
    tstart = np.searchsorted(tid_pos, np.arange(T + 1)).astype(np.int64)
    tvideo = tv[torder].astype(np.int64)
    vtstart = np.searchsorted(tvideo, np.arange(len(vuniq) + 1)).astype(np.int64)
    return order, tid_pos, tstart, tvideo, vtstart


def gram_layout(cnt: np.ndarray, gram_max: int) -> np.ndarray:
    """(T,) offset of each tracklet's (n x n) Gram matrix in one flat array, -1 for tracklets
    of one member or of more than ``gram_max`` members (kept out of it)."""
    small = (cnt >= 2) & (cnt <= gram_max)
    size = np.where(small, cnt * cnt, 0).astype(np.int64)
    return np.where(small, np.cumsum(size) - size, -1)


def read_tracklet_sums(src: FeatureSource, order: np.ndarray, tstart: np.ndarray,
                       block_rows: int = 2048, tick=None, gram_max: int = 0):
    """One pass over the features in sequence order (blocks of whole tracklets).

    Returns ``(S, p, q)``: S (T, D) float64 member sums of each tracklet, p (N,) ``<x_i, S_t>``
    and q (N,) ``|x_i|^2`` per sequence position. Raises on NaN / zero rows. With
    ``gram_max >= 2`` returns ``(S, p, q, gram, goff)`` as well: the member Gram matrices
    ``<x_i, x_j>`` of every tracklet of 2..gram_max members, flat, tracklet t's (n, n) matrix at
    ``gram[goff[t]:goff[t] + n * n]`` (``goff`` -1 for the others), so that level 1 updates its
    dot products without reading the members again (:func:`~cion.denoise.tracklet.denoise_tracklets`).
    """
    T = len(tstart) - 1
    cnt = np.diff(tstart)
    S = np.zeros((T, src.dim))
    p = np.empty(len(order))
    q = np.empty(len(order))
    goff = gram_layout(cnt, gram_max) if gram_max >= 2 else None
    gram = None
    if goff is not None:
        last = np.flatnonzero(goff >= 0)
        gram = np.empty(int(goff[last[-1]] + cnt[last[-1]] ** 2) if len(last) else 0)
    blocks = []
    a = 0
    while a < T:                 # block boundaries: whole tracklets, about block_rows rows
        b = max(int(np.searchsorted(tstart, tstart[a] + block_rows, side="right")) - 1, a + 1)
        blocks.append((a, b))
        a = b

    def work(ab):
        a, b = ab
        lo, hi = int(tstart[a]), int(tstart[b])
        xb = src.take(order[lo:hi])                       # (releases the pages it read)
        q[lo:hi] = np.einsum("ij,ij->i", xb, xb)
        own = np.repeat(np.arange(b - a), cnt[a:b])
        ind = sp.csr_matrix((np.ones(hi - lo), (own, np.arange(hi - lo))), shape=(b - a, hi - lo))
        S[a:b] = ind @ xb                                  # tracklet sums (sparse indicator)
        p[lo:hi] = np.einsum("ij,ij->i", xb, np.repeat(S[a:b], cnt[a:b], axis=0))
        if gram is not None:
            ts = a + np.flatnonzero(goff[a:b] >= 0)
            for n in np.unique(cnt[ts]):               # tracklets of n members: one batched product
                tn = ts[cnt[ts] == n]
                rows = (tstart[tn] - lo)[:, None] + np.arange(n)[None, :]
                x3 = xb[rows]                            # (k, n, D)
                g = np.matmul(x3, x3.transpose(0, 2, 1))  # (k, n, n)
                gram[goff[tn][:, None] + np.arange(n * n)[None, :]] = g.reshape(len(tn), n * n)
        if tick is not None:
            tick(hi - lo)

    src.map(work, blocks)
    src.release()
    if gram is not None:
        return S, p, q, gram, goff
    return S, p, q


def _udt(M: int, exact_limit: int):
    """Centroid dtype for the noise statistics: float64 where pairs are counted exactly."""
    return np.float64 if M <= exact_limit else np.float32


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB.

    Linux ``VmHWM`` (belongs to this process image; ``ru_maxrss`` would also count the parent's
    peak before ``exec``), else ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def _own_dots_from_sums(p: np.ndarray, S: np.ndarray, t_of: np.ndarray, cnt: np.ndarray):
    """``<x_i, u_t>`` from ``p_i = <x_i, S_t>``: divide by ``|S_t|`` (0 for a zero centroid)."""
    U_norm = np.sqrt(np.einsum("ij,ij->i", S, S))
    zero = U_norm / np.maximum(cnt, 1) <= 1e-9
    inv = np.where(zero, 0.0, 1.0 / np.where(zero, 1.0, U_norm))
    return p * inv[t_of]


@dataclass
class _Work:
    """What one level hands to the next; arrays indexed by sequence position (N,), tracklet
    (T,) or video (V,). Nothing here holds a feature row per image: the per-image arrays are
    scalars (8 bytes a row), the vectors are (T, D) float64."""
    src: FeatureSource
    order: np.ndarray            # (N,) manifest row of each sequence position
    tid_pos: np.ndarray          # (N,) tracklet of each position
    tstart: np.ndarray           # (T+1,) tracklet segments over positions
    tvideo: np.ndarray           # (T,) video of each tracklet
    vtstart: np.ndarray          # (V+1,) video segments over tracklets
    cnt: np.ndarray              # (T,) members of each tracklet (after level 1)
    S: np.ndarray | None = None  # (T, D) member sums: raw, after level 1, after level 2
    p: np.ndarray | None = None  # (N,) <x_i, S_t>
    q: np.ndarray | None = None  # (N,) |x_i|^2
    code_pos: np.ndarray | None = None   # (N,) int8 status index per position
    alive: np.ndarray | None = None      # (N,) kept by level 1
    excluded: np.ndarray | None = None   # (E,) positions excluded by level 1, removal order
    target: np.ndarray | None = None     # (E,) tracklet each excluded sample moved to, or -1
    key: np.ndarray | None = None        # (T,) first manifest row of each tracklet
    cnt2: np.ndarray | None = None       # (T,) members after level 2
    glab: np.ndarray | None = None       # (T,) level-2 group of each tracklet
    ident_g: np.ndarray | None = None    # (G,) identity of each level-2 group
    gram: np.ndarray | None = None       # flat member Gram matrices of small tracklets (level 1)
    goff: np.ndarray | None = None       # (T,) offset of each in ``gram``, -1 none

    @property
    def T(self) -> int:
        return len(self.tstart) - 1


class _Stages:
    """Per-stage statistics: counts of statuses, seconds, peak RSS and, optionally, n_S."""

    def __init__(self):
        self.stats: list[dict] = []
        self.pending: list = []           # (stage dict, labels of the tracklets): n_S later

    def record(self, name, seconds, ident_count, code_pos, **extra) -> dict:
        st = {"level": name, "identities": int(ident_count),
              "images_kept": int(np.count_nonzero(code_pos == 0)),
              "images_reallocated": int(np.count_nonzero(code_pos == 1)),
              "images_discarded": int(np.count_nonzero(code_pos == 2)),
              "seconds": round(float(seconds), 4), "peak_rss_mb": _peak_rss_mb()}
        st.update(extra)
        self.stats.append(st)
        return st


def _member_noise(st: dict, w: _Work, members, sigma_cst, sigma_drm, search) -> None:
    """n_S (Eq. 3) of the tracklets as they stand, over the member positions ``members``."""
    ts = time.perf_counter()
    dots = _own_dots_from_sums(w.p[members], w.S, w.tid_pos[members], w.cnt)
    U = unit_rows(w.S, w.cnt, _udt(w.T, search["exact_limit"]))
    st.update(noise_from_dots(w.tid_pos[members], dots, U, sigma_cst, sigma_drm, **search))
    st["noise_seconds"] = round(time.perf_counter() - ts, 4)


def _gram_max(src: FeatureSource, wanted: int) -> int:
    """Largest tracklet whose member Gram matrix level 1 keeps: at most ``wanted`` members and
    no more 8-byte entries per member than a stored feature row has bytes, so the matrices
    never take more memory than the features themselves."""
    row_bytes = src._stored_dim * np.dtype(src.X.dtype).itemsize
    return int(min(wanted, row_bytes // 8))


def _read_pass(w: _Work, block_rows: int, tick, gram_max: int) -> None:
    """Pass 1: validate and normalise every row; tracklet sums and member dot products (and
    the small tracklets' Gram matrices when level 1 runs)."""
    gm = _gram_max(w.src, gram_max)
    res = read_tracklet_sums(w.src, w.order, w.tstart, block_rows, tick, gram_max=gm)
    w.S, w.p, w.q = res[:3]
    w.gram, w.goff = (res[3], res[4]) if gm >= 2 else (None, None)
    w.src.release()
    n = len(w.order)
    w.code_pos = np.zeros(n, dtype=np.int8)
    w.alive = np.ones(n, dtype=bool)
    w.excluded = np.zeros(0, dtype=np.int64)


def _level_tracklet(w: _Work, sigma_cst: float, block_rows: int, tick) -> dict:
    """Level 1 (Eq. 4): drop the farthest member of every tracklet while it is ``>= sigma_cst``
    from the centroid of the others; updates ``S``, ``cnt``, ``p`` in place."""
    w.alive, w.excluded, rounds = denoise_tracklets(
        w.src, w.order, w.tstart, w.S, w.cnt, w.p, w.q, sigma_cst, chunk=block_rows,
        progress=lambda r, e: tick(r), gram=w.gram, goff=w.goff)
    w.gram = w.goff = None                           # level 1 was their only user
    w.src.release()
    w.code_pos[w.excluded] = 2
    return {"rounds": int(rounds), "excluded": int(len(w.excluded))}


def _first_rows(w: _Work) -> np.ndarray:
    """(T,) first manifest row still in each tracklet (ties in Eq. 5 go to the earliest row)."""
    apos = np.flatnonzero(w.alive)
    fs = run_starts(w.tid_pos[apos])
    key = np.empty(w.T, dtype=np.int64)
    key[w.tid_pos[apos[fs]]] = w.order[apos[fs]]
    return key


def _level_video(w: _Work, sigma_cst: float, sigma_drm: float, tick) -> dict:
    """Level 2: reallocate each excluded sample to the closest other tracklet of its video
    (Eq. 5, level-1 centroids, ``< sigma_cst``), then merge the tracklets of one video whose
    new centroids are ``< sigma_drm`` apart (Eq. 6, transitive closure).

    The excluded samples are read back from the features a tile at a time per run of videos
    and their sums added to ``S`` as they are placed, so memory is (T, D) whatever their number.
    """
    src, ex = w.src, w.excluded
    e_track = w.tid_pos[ex]
    w.target = reallocate(lambda k: src.take(w.order[ex[k]]), e_track, w.tvideo[e_track],
                          unit_rows(w.S, w.cnt), w.key, w.vtstart, sigma_cst,
                          threads=src.threads, sums=w.S)     # S becomes the level-2 sums
    src.release()
    ok = w.target >= 0
    w.code_pos[ex[ok]] = 1
    w.cnt2 = w.cnt + np.bincount(w.target[ok], minlength=w.T)
    np.minimum.at(w.key, w.target[ok], w.order[ex[ok]])
    tick(1)
    mi, mj = merge_pairs(unit_rows(w.S, w.cnt2), w.vtstart, sigma_drm, threads=src.threads)
    w.glab = components(w.T, mi, mj)
    tick(2)
    return {"reallocated": int(ok.sum()), "merge_links": int(len(mi))}


def _level_cross(w: _Work, range_half_width: int, sigma_drm: float, cross_order: str,
                 seed: int, tick) -> dict:
    """Level 3 (Eq. 7): the level-2 groups as one ultra-long sequence (video first appearance,
    then first row); every pair within ``range_half_width`` positions whose centroids are
    ``< sigma_drm`` apart is linked; identities are the transitive closure."""
    G = int(w.glab.max()) + 1 if w.T else 0
    gcnt = np.bincount(w.glab, weights=w.cnt2, minlength=G).astype(np.int64)
    gkey = np.full(G, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(gkey, w.glab, w.key)
    gvid = np.empty(G, dtype=np.int64)
    gvid[w.glab] = w.tvideo
    seq = np.lexsort((gkey, gvid))                   # the ultra-long sequence
    pos_of_g = np.empty(G, dtype=np.int64)
    pos_of_g[seq] = np.arange(G)
    U3 = segment_sums(w.S, pos_of_g[w.glab], G)      # group sums, in sequence order
    U3 = unit_rows(U3, gcnt[seq], out=U3)
    li, lj = cross_links(U3, int(range_half_width), sigma_drm, cross_order, seed,
                         progress=tick, threads=w.src.threads)
    del U3
    comp = components(G, li, lj)
    w.ident_g = np.empty(G, dtype=np.int64)
    w.ident_g[seq] = comp
    return {"links": int(len(li)), "order": cross_order}


def _row_labels(w: _Work) -> tuple[np.ndarray, np.ndarray]:
    """(N,) identity per manifest row (numbered by first row, -1 discarded), (N,) status."""
    n = len(w.order)
    t_final = w.ident_g[w.glab]                      # identity of each tracklet
    lab_pos = np.full(n, -1, dtype=np.int64)
    lab_pos[w.alive] = t_final[w.tid_pos[w.alive]]
    moved = w.target >= 0
    lab_pos[w.excluded[moved]] = t_final[w.target[moved]]
    identity = np.full(n, -1, dtype=np.int64)
    identity[w.order] = lab_pos
    status_code = np.empty(n, dtype=np.int8)
    status_code[w.order] = w.code_pos
    return number_by_first_row(identity), status_code


def denoise(features, video, tracklet, *, sigma_cst: float = 0.2, sigma_drm: float = 0.18,
            range_half_width: int = 1000, levels=LEVELS, cross_order: str = "sequence",
            noise_stats: bool = True, noise_exact_limit: int = 4096, progress: bool = False,
            block_rows: int = 2048, threads: int | None = None, seed: int = 0,
            centre=None, whiten: int | None = None, gram_max: int = 64) -> DenoiseResult:
    """Denoise tracklets into cross-video identities (paper Sec. 3.2, Eq. 4-7).

    Args:
        features: (N, D) float16/32/64 array or ``.npy`` path (opened memory-mapped), one
            feature per manifest row; need not be normalised (rows are L2-normalised here).
            Or a :func:`~cion.denoise.features.prepare_features` source (centred / whitened
            once, shared with :func:`~cion.denoise.calibrate_thresholds`; ``threads`` is then
            the source's).
        video: (N,) video of each row; tracklet: (N,) tracklet id of each row (unique per video).
        sigma_cst: intra-consistency threshold (paper 0.2): exclusion at ``>=``, reallocation
            at ``<``. sigma_drm: inter-discrimination threshold (paper 0.18), link at ``<``.
        range_half_width: ``r_s`` of the sliding range (paper 1000).
        levels: subset of ``("tracklet", "video", "cross")`` or a comma-separated string.
        cross_order: ``sequence`` (paper), ``coarse`` or ``both`` (see :mod:`cion.denoise.cross`).
        noise_stats: compute n_S (Eq. 3) for the raw tracklets and after each level.
        noise_exact_limit: count close centroid pairs exactly up to this many identities,
            above it with the k-means-tree neighbour search (see :mod:`cion.denoise.noise`).
        progress: show progress bars.
        block_rows: rows read per block.
        threads: threads for the passes over the features (default: min(2, CPUs)).
        centre: None, or (N,) group of each row (its video or camera): every feature is first
            centred on its group's mean (:meth:`~cion.denoise.features.FeatureSource.centre`),
            which removes what one camera adds to all its images. Thresholds then apply to the
            centred features (calibrate them with the same ``centre``).
        whiten: None, or the dimensions to keep when PCA-whitening the features (after
            centring), see :meth:`~cion.denoise.features.FeatureSource.whiten`; 64 suits the
            demo's 384-d histogram. Calibrate with the same value.
        gram_max: level 1 keeps the member Gram matrices of tracklets of up to this many images
            (capped so they never outweigh the features) and updates its dot products from them
            instead of re-reading every member after each removal; 0 re-reads always.

    Returns:
        :class:`DenoiseResult` (unpacks as ``identity, status``).

    Memory: the memory map's pages in use plus a few (T, D) float64 arrays and per-image
    scalars, whatever share of the images level 1 excludes (see docs/robustness.md).

    Raises:
        CionError: rows of features / video / tracklet differ, NaN or zero feature rows, an
            unknown level, bad thresholds.
    """
    lv = parse_levels(levels)
    if cross_order not in ORDERS:
        raise CionError(f"unknown cross-video order '{cross_order}'; choose one of {list(ORDERS)}")
    for name, val in (("sigma_cst", sigma_cst), ("sigma_drm", sigma_drm)):
        if not (0.0 < float(val) <= 2.0):
            raise CionError(f"{name} = {val} is outside (0, 2]; cosine distances lie in [0, 2]")
    if int(range_half_width) < 0:
        raise CionError(f"range half-width {range_half_width} must be >= 0")
    src = prepare_features(features, centre=centre, whiten=whiten, threads=threads)
    if src.n == 0:
        raise CionError("nothing to denoise: the features / manifest have no rows")
    order, tid_pos, tstart, tvideo, vtstart = _layout(video, tracklet, src.n)
    w = _Work(src, order, tid_pos, tstart, tvideo, vtstart, np.diff(tstart).astype(np.int64))
    search = {"exact_limit": noise_exact_limit, "seed": seed, "threads": src.threads}
    stages = _Stages()
    with single_threaded_blas(src.threads > 1), _Phases(progress) as ph:
        t0 = time.perf_counter()
        _read_pass(w, block_rows, ph.phase("reading features", src.n, advance=True),
                   gram_max if "tracklet" in lv else 0)
        st = stages.record("raw", time.perf_counter() - t0, w.T, w.code_pos)
        if noise_stats:
            _member_noise(st, w, slice(None), sigma_cst, sigma_drm, search)

        if "tracklet" in lv:
            t0 = time.perf_counter()
            extra = _level_tracklet(w, sigma_cst, block_rows,
                                    ph.phase("level 1: tracklets (rounds)", None))
            st = stages.record("tracklet", time.perf_counter() - t0, w.T, w.code_pos, **extra)
            if noise_stats:
                _member_noise(st, w, np.flatnonzero(w.alive), sigma_cst, sigma_drm, search)
        w.key = _first_rows(w)

        w.target = np.full(len(w.excluded), -1, dtype=np.int64)
        w.glab, w.cnt2 = np.arange(w.T), w.cnt
        if "video" in lv:
            t0 = time.perf_counter()
            extra = _level_video(w, sigma_cst, sigma_drm, ph.phase("level 2: videos", 2))
            st = stages.record("video", time.perf_counter() - t0,
                               w.glab.max() + 1 if w.T else 0, w.code_pos, **extra)
            if noise_stats:
                stages.pending.append((st, w.glab))

        w.ident_g = np.arange(int(w.glab.max()) + 1 if w.T else 0)
        if "cross" in lv:
            t0 = time.perf_counter()
            extra = _level_cross(w, range_half_width, sigma_drm, cross_order, seed,
                                 ph.phase("level 3: sliding range", len(w.ident_g), advance=True))
            st = stages.record("cross", time.perf_counter() - t0,
                               w.ident_g.max() + 1 if len(w.ident_g) else 0, w.code_pos, **extra)
            if noise_stats:
                stages.pending.append((st, w.ident_g[w.glab]))

        identity, status_code = _row_labels(w)
        if stages.pending:
            ts = time.perf_counter()
            _pending_noise(src, order, tid_pos, w.alive, w.excluded, w.target, w.S, w.cnt2,
                           stages.pending, sigma_cst, sigma_drm, search, block_rows, ph)
            src.release()
            per = (time.perf_counter() - ts) / len(stages.pending)
            for st, _ in stages.pending:
                st["noise_seconds"] = round(per, 4)
    params = {"sigma_cst": float(sigma_cst), "sigma_drm": float(sigma_drm),
              "range_half_width": int(range_half_width), "levels": list(lv),
              "cross_order": cross_order, "rows": int(src.n), "dim": int(src.dim),
              "centred": src.centred, "whitened": src.whitened}
    return DenoiseResult(identity, status_code, stages.stats, params)


def _pending_noise(src, order, tid_pos, alive, excluded, target, S2, cnt2, pending,
                   sigma_cst, sigma_drm, search, block_rows, ph):
    """n_S of level-2 / level-3 labellings: one read pass for the per-image radii."""
    n = len(order)
    t_of = np.full(n, -1, dtype=np.int64)            # level-2 tracklet of each member position
    t_of[alive] = tid_pos[alive]
    moved = target >= 0
    t_of[excluded[moved]] = target[moved]
    mem = np.flatnonzero(t_of >= 0)
    labs, units, dots = [], [], []
    for st, lab_t in pending:
        M = int(lab_t.max()) + 1
        gS = segment_sums(S2, lab_t, M)
        gc = np.bincount(lab_t, weights=cnt2, minlength=M)
        units.append(unit_rows(gS, gc, _udt(M, search["exact_limit"])))
        del gS
        labs.append(lab_t[t_of[mem]])
        dots.append(np.empty(len(mem)))
    tick = ph.phase("noise n_S (radii)", len(mem), advance=True)
    def work(sl, xb):
        for k in range(len(pending)):                 # at most two labellings
            dots[k][sl] = np.einsum("ij,ij->i", xb, units[k][labs[k][sl]])
        tick(sl.stop - sl.start)

    src.for_chunks(order[mem], work, block_rows)
    for k, (st, _) in enumerate(pending):
        st.update(noise_from_dots(labs[k], dots[k], units[k], sigma_cst, sigma_drm, **search))
