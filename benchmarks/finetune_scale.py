"""Cluster Contrast's per-epoch pseudo-labelling at MSMT17 size: k-reciprocal Jaccard distance +
DBSCAN on simulated clustered features, seconds and peak RSS, ours (sparse) beside the classic
dense code.

    python benchmarks/finetune_scale.py                    # 32,621 x 2048, 1,041 clusters
    python benchmarks/finetune_scale.py --dense-n 8000     # the dense code at a size that fits

Every stage runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own; each figure
includes the features (N x D float32) and the Python / torch / faiss runtime.

Features: 1,041 identities (MSMT17's training set) with sizes drawn around 31 images, each seen
by 2-5 cameras; a feature is ``identity centre + camera offset + image noise``, L2-normalised,
plus 3% of images from no identity, so DBSCAN has realistic work (clusters, border points,
outliers). The "classic" stage is a transcription of the public Cluster Contrast
``compute_jaccard_distance`` (faiss-cpu search, dense float32 V, query expansion and Jaccard
matrices, Python loops) followed by DBSCAN on the dense matrix; at the full size it needs
three 4.3 GB matrices, so by default it runs at ``--dense-n`` images, where the sparse code
runs too and the two matrices and label sets are compared.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def simulate(n: int, d: int, ids: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float32 unit features and (n,) identity labels (-1 = distractor)."""
    rng = np.random.default_rng(seed)
    distractors = int(round(0.03 * n))
    share = rng.gamma(2.0, 1.0, ids)
    sizes = 1 + rng.multinomial(n - distractors - ids, share / share.sum())
    labels = np.concatenate([np.repeat(np.arange(ids), sizes), -np.ones(distractors, np.int64)])
    x = np.empty((n, d), np.float32)
    centres = rng.standard_normal((ids, d)).astype(np.float32)
    row = 0
    for c, size in enumerate(sizes):
        cams = rng.integers(2, 6)
        offsets = rng.standard_normal((cams, d)).astype(np.float32) * 0.6
        cam_of = rng.integers(0, cams, size)
        x[row:row + size] = (centres[c] + offsets[cam_of]
                             + 0.75 * rng.standard_normal((size, d)).astype(np.float32))
        row += size
    x[row:] = rng.standard_normal((distractors, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(n)
    return x[perm], labels[perm]


def classic_jaccard(features: np.ndarray, k1: int = 30, k2: int = 6) -> np.ndarray:
    """The classic dense code (:func:`cion.finetune.reference.classic_jaccard`) with the
    neighbour ranks of the public code (faiss ``IndexFlatL2``, ``index_init_cpu``)."""
    import faiss

    from cion.finetune.reference import classic_jaccard as dense

    index = faiss.IndexFlatL2(features.shape[1])
    index.add(features)
    _, initial_rank = index.search(features, k1)
    return dense(features, k1, k2, initial_rank=initial_rank)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_stage(kind: str, n: int, d: int, ids: int, eps: float, save: str | None) -> dict:
    """One measurement in this process: simulate, distance, DBSCAN; a dict of figures.

    The sparse stage runs the three steps of ``jaccard_distance`` one by one (the same calls it
    makes) to time each: neighbour search, expanded-set weights V, Jaccard pairs."""
    import torch

    from cion.finetune import jaccard as J
    from cion.finetune.cluster import cluster_dbscan
    from sklearn.metrics import adjusted_rand_score

    torch.set_num_threads(os.cpu_count() or 1)
    x, truth = simulate(n, d, ids)
    rss_features = _peak_rss_gb()
    steps = {}
    c0, t0 = _cpu_s(), time.perf_counter()
    if kind == "sparse":
        nn, sims = J.knn_inner_product(x, 30, return_similarities=True)
        steps["search_s"] = time.perf_counter() - t0
        v = J._expansion_weights(torch.from_numpy(x), torch.from_numpy(nn), torch.from_numpy(sims),
                                 30, 6)
        del nn, sims
        steps["weights_s"] = time.perf_counter() - t0 - steps["search_s"]
        dist = J._jaccard_sparse(v, J.DEFAULT_PAIR_BUDGET)
        del v
        stored = int(dist.nnz)
    else:
        dist = classic_jaccard(x, 30, 6)
        stored = n * n
    c1, t1 = _cpu_s(), time.perf_counter()
    labels = cluster_dbscan(dist, eps, 4)
    c2, t2 = _cpu_s(), time.perf_counter()
    if save:
        np.save(save + ".labels.npy", labels)
        if kind == "classic":
            np.save(save + ".dist.npy", dist)
        else:
            import scipy.sparse as sp
            sp.save_npz(save + ".dist.npz", dist)
    keep = truth >= 0
    return {"kind": kind, "n": n, "d": d, "jaccard_s": round(t1 - t0, 2),
            "dbscan_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2),
            "cpu_s": round(c2 - c0, 1), "steps": {k: round(v, 1) for k, v in steps.items()},
            "peak_rss_gb": round(_peak_rss_gb(), 2), "features_rss_gb": round(rss_features, 2),
            "stored_pairs": stored, "clusters": int(labels.max() + 1),
            "outliers": int((labels < 0).sum()),
            "ari_vs_identities": round(float(adjusted_rand_score(truth[keep], labels[keep])), 3),
            "load": round(os.getloadavg()[0], 1)}


def _subprocess(args, kind: str, n: int, save: str | None) -> dict:
    cmd = [sys.executable, __file__, "--stage", kind, "--n", str(n), "--d", str(args.d),
           "--ids", str(max(2, round(args.ids * n / args.n))), "--eps", str(args.eps)]
    if save:
        cmd += ["--save", save]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32621, help="images (MSMT17 train: 32,621)")
    ap.add_argument("--d", type=int, default=2048, help="feature width")
    ap.add_argument("--ids", type=int, default=1041, help="identities at --n images")
    ap.add_argument("--eps", type=float, default=0.7, help="DBSCAN eps (MSMT17 recipe: 0.7)")
    ap.add_argument("--dense-n", type=int, default=8000,
                    help="images for the classic dense code (0: skip; it needs 3 x 4 N^2 bytes)")
    ap.add_argument("--stage", choices=["sparse", "classic"], help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.n, args.d, args.ids, args.eps, args.save)))
        return
    import tempfile

    rows = [_subprocess(args, "sparse", args.n, None)]
    if args.dense_n:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(_subprocess(args, "sparse", args.dense_n, f"{tmp}/sparse"))
            rows.append(_subprocess(args, "classic", args.dense_n, f"{tmp}/classic"))
            import scipy.sparse as sp
            ours = sp.load_npz(f"{tmp}/sparse.dist.npz")
            dense = np.load(f"{tmp}/classic.dist.npy")
            full = np.ones(ours.shape, np.float32)
            coo = ours.tocoo()
            full[coo.row, coo.col] = coo.data
            diff = float(np.abs(full - dense).max())
            same = bool(np.array_equal(np.load(f"{tmp}/sparse.labels.npy"),
                                       np.load(f"{tmp}/classic.labels.npy")))
    print(f"{'code':8} {'N':>6} {'jaccard s':>9} {'dbscan s':>8} {'total s':>8} {'CPU s':>7} "
          f"{'peak RSS GB':>11} {'stored pairs':>13} {'clusters':>8} {'outliers':>8} {'ARI':>6} "
          f"{'load':>5}")
    for r in rows:
        print(f"{r['kind']:8} {r['n']:6d} {r['jaccard_s']:9.1f} {r['dbscan_s']:8.1f} "
              f"{r['total_s']:8.1f} {r['cpu_s']:7.1f} {r['peak_rss_gb']:11.2f} "
              f"{r['stored_pairs']:13,d} {r['clusters']:8d} {r['outliers']:8d} "
              f"{r['ari_vs_identities']:6.3f} {r['load']:5.1f}")
    print(f"sparse steps at N={args.n} (wall s): {rows[0]['steps']}")
    if args.dense_n:
        print(f"N={args.dense_n}: max |sparse - dense| = {diff:.2e}; DBSCAN labels identical: {same}")
    print(f"(features alone: {rows[0]['features_rss_gb']:.2f} GB peak RSS at N={args.n}; "
          f"cores: {os.cpu_count()}; 'load' = 1-min load average at the end of each stage; "
          f"wall seconds are inflated by other processes, CPU seconds much less)")


if __name__ == "__main__":
    main()
