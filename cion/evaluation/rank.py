"""ReID ranking metrics: mAP, mINP and multi-shot CMC, without sorting the gallery.

Protocol (Market-1501's, as torchreid's ``eval_market1501``; the paper's Sec. 4.1 metrics): for every query the gallery is ordered
by distance, ties broken by gallery index (a stable sort); gallery items with the query's identity
*and* camera are dropped, as are junk items (identity -1); identity 0 (Market distractors) stays as
an ordinary negative; queries left without a positive are skipped. With the kept list:

* CMC rank-k of a query is 1 if a positive is among its first k items (multi-shot);
* AP is the mean, over the positives, of the precision at the rank of each positive;
* INP is ``positives / rank of the last positive`` (Ye et al., "Deep learning for person
  re-identification: a survey", mINP);
* mAP, mINP and the CMC curve average over the valid queries.

How it is computed. Only the *ranks of the positives* matter, and a query has few positives
(Market: about 14 of 15,913 gallery items). So instead of sorting each gallery row
(O(G log G) and a (Q, G) int64 index matrix, as the Cython evaluators do), each query's positives
are sorted (a handful of values), every negative is located among them by one batched binary
search (``torch.searchsorted``) and the negatives falling before each positive are counted with a
histogram. The rank of the k-th positive is then ``k + negatives before it``. Everything is
batched over a chunk of queries, so memory is O(chunk x G), the same code runs on CPU or CUDA
tensors, and :func:`evaluate_features` computes distances chunk by chunk from features without
ever holding the whole query x gallery matrix.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from cion.errors import CionError

#: Elements (queries x gallery) handled per chunk; about 40 bytes each of temporary memory.
DEFAULT_CHUNK_ELEMENTS = 1 << 22

METRICS = ("cosine", "euclidean", "sqeuclidean")


class EvaluationError(CionError, ValueError):
    """Inputs to the evaluator are inconsistent; the message says which and how to fix them."""


@dataclass
class _Labels:
    """Identity / camera labels on ``device``, plus the gallery grouped by identity."""
    q_pids: torch.Tensor        # (Q,) int64
    q_camids: torch.Tensor      # (Q,) int64
    g_pids: torch.Tensor        # (G,) int64
    g_camids: torch.Tensor      # (G,) int64
    junk_cols: torch.Tensor     # (J,) gallery indices with identity -1
    id_values: torch.Tensor     # (U,) sorted identities present in the (non-junk) gallery
    id_start: torch.Tensor      # (U,) first position of each identity in ``by_id``
    id_count: torch.Tensor      # (U,) gallery items of each identity
    by_id: torch.Tensor         # (G',) gallery indices grouped by identity, ascending inside


def _as_long(x, name: str, n: int | None, device) -> torch.Tensor:
    t = torch.as_tensor(np.array(x) if not torch.is_tensor(x) else x)
    if t.ndim != 1:
        raise EvaluationError(f"{name} must be a 1-D array of integers, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or (t.is_floating_point() and not bool((t == t.round()).all())):
        raise EvaluationError(f"{name} must hold whole numbers (identities / cameras), got {t.dtype}")
    if n is not None and t.numel() != n:
        raise EvaluationError(f"{name} has {t.numel()} entries but the distance matrix / features "
                              f"have {n} along that side")
    return t.to(device=device, dtype=torch.int64)


def _prepare_labels(q_pids, g_pids, q_camids, g_camids, num_q, num_g, device) -> _Labels:
    qp = _as_long(q_pids, "q_pids", num_q, device)
    gp = _as_long(g_pids, "g_pids", num_g, device)
    qc = _as_long(q_camids, "q_camids", num_q, device)
    gc = _as_long(g_camids, "g_camids", num_g, device)
    keep = gp != -1                                   # junk never counts, as hit or miss
    kept = torch.nonzero(keep).flatten()
    order = kept[torch.sort(gp[kept], stable=True).indices]   # grouped by id, index-ascending
    ids, counts = torch.unique_consecutive(gp[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return _Labels(qp, qc, gp, gc, torch.nonzero(~keep).flatten(), ids, starts, counts, order)


#: Threads for the ranking passes on CPU. They are many short memory-bound passes: with OpenMP
#: every pass ends in a barrier, so on shared or busy cores extra threads mostly wait (measured
#: 5x slower with 2 threads than 1 on a loaded 2-core machine). The distance matmuls of
#: :func:`evaluate_features` keep torch's thread setting.
RANK_THREADS = 1
#: Below this share of (query, gallery) pairs closer than the last positive, those pairs are
#: compared exactly (sparse path); above it the grid path bins them first.
SPARSE_LIMIT = 0.03
#: Cells of the per-row distance grid used when many negatives precede the last positive.
GRID_CELLS = 2048


def _positive_ranks(dist: torch.Tensor, q_slice: slice, lab: _Labels):
    """Ranks of the positives of a chunk of queries.

    Args:
        dist: (B, G) distances of queries ``q_slice`` to the whole gallery (float, finite).
    Returns:
        ranks: (B, M) float64, 0-based rank (in the kept list) of each query's positives in
            ranking order; entries ``>= npos`` are padding.
        npos: (B,) int64 number of positives per query (0: query is skipped).
    """
    device = dist.device
    b, g = dist.shape
    qp = lab.q_pids[q_slice]
    qc = lab.q_camids[q_slice]
    # --- each query's positive candidates: the gallery items of its identity
    n_ids = len(lab.id_values)
    slot = torch.searchsorted(lab.id_values, qp).clamp(max=max(n_ids - 1, 0))
    present = (lab.id_values[slot] == qp) if n_ids else torch.zeros_like(qp, dtype=torch.bool)
    count = torch.where(present, lab.id_count[slot], torch.zeros_like(qp))
    m = int(count.max()) if b else 0
    if m == 0:
        return (torch.zeros((b, 0), dtype=torch.float64, device=device),
                torch.zeros(b, dtype=torch.int64, device=device))
    offs = torch.arange(m, device=device)
    in_list = offs[None, :] < count[:, None]                                      # (B, M)
    cand = lab.by_id[(lab.id_start[slot][:, None] + offs[None, :]).clamp(max=len(lab.by_id) - 1)]
    # drop same id + same camera; an unknown query camera (-1) is never "the same camera"
    valid = in_list & ((lab.g_camids[cand] != qc[:, None]) | (qc[:, None] < 0))
    inf = torch.full_like(dist[:, :1], float("inf"))
    pos_d = torch.where(valid, dist.gather(1, cand), inf)
    # stable sort: candidates are index-ascending, so equal distances keep gallery order
    pos_d, perm = torch.sort(pos_d, dim=1, stable=True)
    pos_idx = cand.gather(1, perm)
    npos = valid.sum(1)
    real = offs[None, :] < npos[:, None]                                          # (B, M)

    # --- only negatives up to the last positive matter: junk and the query's own identity are
    # masked out, later negatives cannot change any positive's rank
    d = dist
    last = pos_d.gather(1, (npos - 1).clamp(min=0)[:, None])
    last = torch.where(npos[:, None] > 0, last, -inf)
    close = d <= last                                                             # (B, G)
    if lab.junk_cols.numel():
        close[:, lab.junk_cols] = False
    r_in, c_in = torch.nonzero(in_list, as_tuple=True)
    close[r_in, cand[r_in, c_in]] = False
    n_close = int(close.sum())

    def before_count(rows, cols, vals, same):
        """(B, M) count of listed negatives ranked before each positive of their row.

        rows/cols/vals: (n,) negatives; same: (n, M) bool, positives they may precede."""
        out = torch.zeros((b, m), dtype=torch.int64, device=device)
        piece = max(1, (1 << 22) // m)
        for s in range(0, len(rows), piece):   # bounded (piece, M) temporaries, not a per-item loop
            r, c, v = rows[s:s + piece], cols[s:s + piece], vals[s:s + piece]
            pd, pi = pos_d[r], pos_idx[r]
            first = (v[:, None] < pd) | ((v[:, None] == pd) & (c[:, None] < pi))
            out.index_add_(0, r, (first & same[s:s + piece]).to(torch.int64))
        return out

    if n_close < SPARSE_LIMIT * close.numel():
        # sparse (the usual case for a trained model): compare the few close negatives exactly
        rows, cols = torch.nonzero(close, as_tuple=True)
        neg_before = before_count(rows, cols, d[rows, cols], real[rows])
    else:
        # dense (weak model): bin each row's close distances on a uniform grid over
        # [row min, last positive]. Binning is monotone, so a negative in a lower cell than a
        # positive is ranked before it and one in a higher cell after it; only negatives that
        # share a cell with a positive are compared exactly. Cost: a few vectorised passes.
        cells = GRID_CELLS
        lo = d.amin(1, keepdim=True)          # any lower bound of the close values will do
        span = last - lo
        scale = torch.where((npos[:, None] > 0) & (span > 0), (cells - 1) / span,
                            torch.zeros_like(span))
        lo = torch.where(npos[:, None] > 0, lo, torch.zeros_like(lo))

        def cell_of(x, keep):
            c = ((x - lo) * scale).to(torch.int64).clamp_(0, cells - 1)
            return torch.where(keep, c, torch.full_like(c, cells))         # cells = "beyond"

        cell = cell_of(d, close)                                           # (B, G)
        pos_cell = cell_of(pos_d, real)                                    # (B, M)
        row_off = (torch.arange(b, device=device) * (cells + 1))[:, None]
        hist = torch.bincount((cell + row_off).flatten(), minlength=b * (cells + 1))
        below = torch.cumsum(hist.view(b, cells + 1), 1)                   # (B, cells + 1)
        below = torch.cat([torch.zeros_like(below[:, :1]), below], 1)      # negatives in cells < c
        neg_before = below.gather(1, pos_cell)
        shared = torch.zeros((b, cells + 1), dtype=torch.bool, device=device)
        shared.scatter_(1, pos_cell, real)
        shared[:, cells] = False
        rows, cols = torch.nonzero(shared.gather(1, cell), as_tuple=True)
        c_amb = cell[rows, cols]
        neg_before += before_count(rows, cols, d[rows, cols],
                                   (pos_cell[rows] == c_amb[:, None]) & real[rows])
    ranks = offs[None, :].to(torch.float64) + neg_before.to(torch.float64)
    return ranks, npos


def _query_scores(ranks: torch.Tensor, npos: torch.Tensor):
    """Per-query AP, INP and first-hit rank (float64; NaN / -1 for queries without positives)."""
    b, m = ranks.shape
    k = torch.arange(m, device=ranks.device)
    real = k[None, :] < npos[:, None]
    prec = torch.where(real, (k[None, :] + 1).to(torch.float64) / (ranks + 1.0), torch.zeros_like(ranks))
    has = npos > 0
    n = npos.clamp(min=1).to(torch.float64)
    ap = torch.where(has, prec.sum(1) / n, torch.full_like(n, float("nan")))
    if m:
        last = ranks.gather(1, (npos - 1).clamp(min=0)[:, None]).squeeze(1)
        first = ranks[:, 0]
    else:
        last = first = torch.zeros(b, dtype=torch.float64, device=ranks.device)
    inp = torch.where(has, n / (last + 1.0), torch.full_like(n, float("nan")))
    first_hit = torch.where(has, first.to(torch.int64), torch.full_like(npos, -1))
    return ap, inp, first_hit


def _summarise(ap: np.ndarray, inp: np.ndarray, first_hit: np.ndarray, max_rank: int,
               num_g: int) -> dict:
    valid = first_hit >= 0
    nv = int(valid.sum())
    if nv == 0:
        raise EvaluationError("no query has a positive in the gallery (an identity other than -1 "
                              "seen by another camera): check that query and gallery share "
                              "identities and that camera ids are right")
    max_rank = min(max_rank, num_g)
    hits = np.bincount(first_hit[valid], minlength=num_g)[:max_rank]
    cmc = np.cumsum(hits) / nv
    return {
        "mAP": float(np.mean(ap[valid])),
        "mINP": float(np.mean(inp[valid])),
        "cmc": cmc,
        "num_queries": int(len(ap)),
        "num_valid_queries": nv,
        "num_gallery": int(num_g),
        "ap": ap,                 # (Q,) per-query AP, NaN where skipped
        "inp": inp,               # (Q,) per-query INP, NaN where skipped
        "first_hit": first_hit,   # (Q,) 0-based rank of the first positive, -1 where skipped
    }


@contextmanager
def _threads(n: int | None):
    """Temporarily use ``n`` torch CPU threads (None: leave as is)."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _evaluate_chunks(chunks: Iterator[tuple[slice, torch.Tensor]], lab: _Labels, num_q: int,
                     num_g: int, max_rank: int) -> dict:
    ap = np.full(num_q, np.nan)
    inp = np.full(num_q, np.nan)
    first = np.full(num_q, -1, dtype=np.int64)
    for sl, dist in chunks:
        if dist.dtype in (torch.float16, torch.bfloat16):
            dist = dist.float()
        if not bool(torch.isfinite(dist.sum(1)).all()) and not bool(torch.isfinite(dist).all()):
            raise EvaluationError(f"distances of queries {sl.start}..{sl.stop - 1} contain NaN or "
                                  "inf: check the features (all-zero or NaN vectors?)")
        with _threads(RANK_THREADS if dist.device.type == "cpu" else None):
            ranks, npos = _positive_ranks(dist, sl, lab)
            a, i, f = _query_scores(ranks, npos)
        ap[sl], inp[sl], first[sl] = a.cpu().numpy(), i.cpu().numpy(), f.cpu().numpy()
    return _summarise(ap, inp, first, max_rank, num_g)


def _chunk_rows(num_q: int, num_g: int, chunk_elements: int) -> int:
    return max(1, min(num_q, chunk_elements // max(num_g, 1)))


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, *,
                  chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> dict:
    """mAP, mINP and CMC of a query x gallery distance matrix (the protocol of the module docstring).

    Args:
        distmat: (Q, G) distances, smaller = more similar; numpy array or torch tensor (CPU or
            CUDA; the work happens on its device). Any float dtype.
        q_pids, g_pids: (Q,), (G,) integer identities; gallery -1 = junk (ignored), 0 = distractor.
        q_camids, g_camids: (Q,), (G,) integer camera ids; -1 = unknown (a query with an unknown
            camera keeps all gallery items of its identity; the Market protocol otherwise).
        max_rank: length of the CMC curve (cut to G if the gallery is smaller).
        chunk_elements: queries are processed in chunks of about this many matrix elements.

    Returns:
        dict with ``mAP``, ``mINP`` (floats in [0, 1]), ``cmc`` ((max_rank,) float64, cmc[k] =
        rank-(k+1) accuracy), ``num_queries``, ``num_valid_queries``, ``num_gallery`` and per-query
        arrays ``ap``, ``inp`` (NaN for skipped queries) and ``first_hit`` (-1 for skipped).
        Equal to torchreid's ``eval_market1501`` (with junk removed beforehand) up to float64
        rounding where no distances tie; ties are broken by gallery index.
    """
    d = distmat if torch.is_tensor(distmat) else torch.from_numpy(np.ascontiguousarray(distmat))
    if d.ndim != 2:
        raise EvaluationError(f"distmat must be 2-D (queries x gallery), got shape {tuple(d.shape)}")
    if not d.is_floating_point():
        d = d.to(torch.float64)
    num_q, num_g = d.shape
    lab = _prepare_labels(q_pids, g_pids, q_camids, g_camids, num_q, num_g, d.device)
    rows = _chunk_rows(num_q, num_g, chunk_elements)
    chunks = ((slice(s, min(s + rows, num_q)), d[s:s + rows]) for s in range(0, num_q, rows))
    return _evaluate_chunks(chunks, lab, num_q, num_g, max_rank)


def _as_features(x, name: str, device) -> torch.Tensor:
    t = x if torch.is_tensor(x) else torch.from_numpy(np.asarray(x))
    if t.ndim != 2:
        raise EvaluationError(f"{name} must be 2-D (items x feature dim), got shape {tuple(t.shape)}")
    if device is not None:
        t = t.to(device)
    if not t.is_floating_point():
        t = t.float()
    return t


def distance_fn(metric: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Distance between row sets, (B, D) x (G, D) -> (B, G), for ``metric`` in :data:`METRICS`.

    ``cosine``: 1 - cos (features are L2-normalised by the caller); ``euclidean``: L2 distance;
    ``sqeuclidean``: squared L2 (torchreid's "euclidean").
    """
    if metric == "cosine":
        return lambda a, b: torch.addmm(a.new_ones(()), a, b.T, beta=1, alpha=-1)
    if metric in ("euclidean", "sqeuclidean"):
        def sq(a, b):
            norms = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :]
            return torch.addmm(norms, a, b.T, alpha=-2).clamp_(min=0)
        return sq if metric == "sqeuclidean" else (lambda a, b: sq(a, b).sqrt_())
    raise EvaluationError(f"unknown metric '{metric}': choose one of {', '.join(METRICS)}")


def prepare_query_gallery(qf, gf, metric: str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features as float32 tensors on ``device`` (default: where ``qf`` is), normalised for cosine."""
    q = _as_features(qf, "query features", device)
    g = _as_features(gf, "gallery features", device if device is not None else q.device)
    if q.shape[1] != g.shape[1]:
        raise EvaluationError(f"query features have dimension {q.shape[1]} but gallery features "
                              f"{g.shape[1]}: they must come from the same model")
    dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    q, g = q.to(dtype), g.to(dtype)
    if metric == "cosine":
        q = torch.nn.functional.normalize(q, dim=1)
        g = torch.nn.functional.normalize(g, dim=1)
    return q, g


def evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, *, metric: str = "cosine",
                      max_rank: int = 50, device=None,
                      chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> dict:
    """Like :func:`evaluate_rank` but from features, never building the full (Q, G) matrix.

    Args:
        qf, gf: (Q, D), (G, D) features (numpy, possibly memory-mapped, or torch; fp16 is
            computed in fp32). Distances are computed one chunk of queries at a time.
        metric: ``cosine`` (1 - cos), ``euclidean`` or ``sqeuclidean``.
        device: where to compute (e.g. ``"cuda"``); default: the device of ``qf`` (CPU for numpy).

    Peak extra memory is about ``40 * chunk_elements`` bytes plus the features themselves.
    Returns the same dict as :func:`evaluate_rank`.
    """
    q, g = prepare_query_gallery(qf, gf, metric, device)
    num_q, num_g = q.shape[0], g.shape[0]
    lab = _prepare_labels(q_pids, g_pids, q_camids, g_camids, num_q, num_g, q.device)
    chunks = distance_chunks(q, g, metric, chunk_elements=chunk_elements)
    return _evaluate_chunks(chunks, lab, num_q, num_g, max_rank)


#: Elements of one query x gallery distance block computed by a single matrix product.
DEFAULT_BLOCK_ELEMENTS = 1 << 26


def distance_chunks(q: torch.Tensor, g: torch.Tensor, metric: str, *,
                    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                    block_elements: int = DEFAULT_BLOCK_ELEMENTS
                    ) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(query slice, (rows, G) distances)`` chunks of about ``chunk_elements``, computed in
    blocks of about ``block_elements`` (one matmul each: a matmul per small chunk would re-read the
    whole gallery every time and run several times slower)."""
    dist = distance_fn(metric)
    num_q, num_g = q.shape[0], g.shape[0]
    rows = _chunk_rows(num_q, num_g, chunk_elements)
    block = max(rows, (block_elements // max(num_g, 1)) // rows * rows)
    for b in range(0, num_q, block):
        d = dist(q[b:b + block], g)
        for s in range(0, d.shape[0], rows):
            yield slice(b + s, b + min(s + rows, d.shape[0])), d[s:s + rows]
        del d


def evaluate_distance_chunks(chunks: Iterator[tuple[slice, torch.Tensor]], num_q: int, num_g: int,
                             q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                             device=None) -> dict:
    """Evaluate distances supplied as ``(query slice, (rows, G) tensor)`` chunks covering all
    queries once, e.g. re-ranked distances streamed by :mod:`cion.evaluation.rerank`."""
    lab = _prepare_labels(q_pids, g_pids, q_camids, g_camids, num_q, num_g,
                          device if device is not None else "cpu")
    return _evaluate_chunks(((sl, d.to(lab.q_pids.device)) for sl, d in chunks), lab, num_q,
                            num_g, max_rank)


def topk_gallery(qf, gf, k: int = 10, *, metric: str = "cosine", distmat=None,
                 device=None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest ``k`` gallery items of each query (stable: ties by gallery index).

    Returns (indices (Q, k) int64, distances (Q, k) float) - for ranked-list figures.
    """
    if distmat is not None:
        d = distmat if torch.is_tensor(distmat) else torch.from_numpy(np.asarray(distmat))
    else:
        q, g = prepare_query_gallery(qf, gf, metric, device)
        d = distance_fn(metric)(q, g)
    k = min(k, d.shape[1])
    vals, idx = torch.sort(d, dim=1, stable=True)
    return idx[:, :k].cpu().numpy(), vals[:, :k].cpu().numpy()
