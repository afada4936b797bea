"""The per-epoch re-clustering of Cluster Contrast (USL / UDA, paper Sec. 4.1):

features of every training image (eval mode, test transform, no flip; sharded over DDP ranks
and all-gathered) -> k-reciprocal Jaccard distance (:func:`cion.finetune.jaccard.jaccard_distance`,
sparse, k1 30, k2 6) -> DBSCAN (:func:`cion.finetune.cluster.cluster_dbscan`, eps 0.6 Market /
0.7 MSMT17, min_samples 4) -> outliers dropped for the epoch -> cluster memory reset to the
L2-normalised cluster means (:func:`cion.finetune.cluster.cluster_centroids`).

Rank 0 clusters and broadcasts the labels; the memory is built on every rank from the same
gathered features, so every rank starts the epoch with an identical memory.
"""
from __future__ import annotations

import time

import numpy as np

from cion import distributed as dist
from cion.errors import CionError
from cion.finetune.cluster import cluster_centroids, cluster_dbscan
from cion.finetune.config import FinetuneConfig
from cion.finetune.jaccard import jaccard_distance


def pseudo_labels(features, cfg: FinetuneConfig) -> np.ndarray:
    """(N, D) L2-normalised features -> (N,) int64 cluster labels 0..C-1, -1 outliers."""
    return cluster_dbscan(jaccard_distance(features, cfg.k1, cfg.k2), cfg.eps, cfg.min_samples)


def recluster(objective, features, cfg: FinetuneConfig, epoch: int) -> dict:
    """Pseudo-labels and a fresh memory for ``epoch`` from (N, D) ``features`` (the same on
    every rank). Sets ``objective.labels`` and resets ``objective.memory``; returns
    ``{"clusters", "outliers", "images", "cluster_seconds"}``.

    Raises :class:`CionError` when DBSCAN leaves every image an outlier (nothing to train on).
    """
    t0 = time.perf_counter()
    labels = pseudo_labels(features, cfg) if dist.rank() == 0 else None
    labels = dist.broadcast_object(labels)
    n = len(labels)
    clusters = int(labels.max()) + 1 if n else 0
    if clusters == 0:
        raise CionError(f"epoch {epoch + 1}: DBSCAN (eps {cfg.eps}, min_samples "
                        f"{cfg.min_samples}) leaves every one of the {n} training images an "
                        "outlier, so there is nothing to train on. Fix: raise eps (e.g. --set "
                        f"eps={min(0.95, round(cfg.eps + 0.1, 2))}), lower min_samples, or start "
                        "from a better --checkpoint")
    objective.memory.reset(cluster_centroids(features, labels))
    objective.labels = labels
    return {"clusters": clusters, "outliers": int((labels < 0).sum()), "images": n,
            "cluster_seconds": round(time.perf_counter() - t0, 3)}
