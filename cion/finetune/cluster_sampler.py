"""P x K batches of pseudo-label clusters for Cluster Contrast (USL / UDA fine-tuning, paper
Sec. 4.1), preferring other cameras, seeded and exactly resumable.

An epoch of Cluster Contrast is a fixed number of iterations (``steps``: 200 Market-1501, 400
MSMT17) over the clusters found at its start. The sampler draws *rounds*: a random permutation
of the clusters, each cluster contributing one group of K images; the groups of consecutive
rounds form one stream, cut into global batches of P = ``batch_size / K`` groups. So a batch
holds P distinct clusters, except one straddling two rounds, which may hold a cluster twice (as
the public code's sampler; it also makes fewer clusters than P workable).

A group: an anchor image drawn uniformly from the cluster, then K - 1 images of the same cluster
taken by camera preference:

1. when the anchor has a camera id (>= 0) and the cluster has images of *other* cameras: from
   those, without replacement if there are at least K - 1, else with replacement;
2. otherwise from the cluster's other images (not the anchor), the same way;
3. a single-image cluster repeats its image K times.

As :class:`cion.data.sampler.IdentityBatchSampler`: the plan of an epoch is a function of
``(seed, epoch)`` and the labels (numpy ``Generator`` seeded with ``[seed, epoch, tag]``), every
sample carries its own augmentation seed, the position is ``(epoch, step)``
(:meth:`set_position`, :meth:`state_dict`), and under DDP each global batch is split into
``world_size`` contiguous slices (``np.array_split`` sizes), rank r taking slice r. The labels
change every epoch (re-clustering): build a new sampler for each epoch, or :meth:`set_labels`,
and save the labels with the checkpoint so a resumed run rebuilds the same plan.

Yields, per step, a list of ``(row, aug_seed, label)`` tuples for this rank (a DataLoader
``batch_sampler``); ``row`` indexes the arrays passed in, ``label`` is the cluster label.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cion.data.sampler import splitmix64
from cion.errors import CionError

_TAG = 0xC1C7


@dataclass
class ClusterPlan:
    """The global image sequence of one epoch: ``steps * batch_size`` rows, labels, seeds."""
    rows: np.ndarray      # (steps * batch_size,) int64
    labels: np.ndarray    # (steps * batch_size,) int64 cluster labels
    seeds: np.ndarray     # (steps * batch_size,) uint64 augmentation seeds
    steps: int


class ClusterSampler:
    """Batch sampler of cluster groups; see the module docstring.

    Args:
        labels: (N,) cluster label of every image, -1 (outliers) skipped.
        batch_size: GLOBAL batch size in images (all ranks), a multiple of ``k``.
        k: images per cluster in a batch (K; Cluster Contrast: 16, the authors 8).
        steps: batches per epoch (iterations).
        cams: optional (N,) camera id per image, -1 = unknown (no preference for that image).
        seed: everything random is a function of it (and the epoch).
        rank, world_size: this process's DDP rank and the number of processes.
    """

    def __init__(self, labels, batch_size: int, k: int, steps: int, cams=None, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if k < 1 or batch_size < k or batch_size % k:
            raise CionError(f"cluster sampler: the batch size ({batch_size}) must be a positive "
                            f"multiple of the images per cluster K ({k})")
        if steps < 1:
            raise CionError(f"cluster sampler: steps per epoch must be >= 1, got {steps}")
        if not 0 <= rank < world_size or batch_size < world_size:
            raise CionError(f"cluster sampler: rank {rank} of {world_size} processes with a "
                            f"global batch of {batch_size} images is not possible")
        self.batch_size, self.k, self.steps = int(batch_size), int(k), int(steps)
        self.p = self.batch_size // self.k
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch, self.step = 0, 0
        self.set_labels(labels, cams)

    # ---- data -----------------------------------------------------------------------------
    def set_labels(self, labels, cams=None) -> None:
        """New pseudo-labels (and cameras) for the following epochs; forgets cached plans."""
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1:
            raise CionError(f"cluster sampler: labels must be (N,), got shape {labels.shape}")
        cams = np.full(len(labels), -1, np.int64) if cams is None else np.asarray(cams, np.int64)
        if cams.shape != labels.shape:
            raise CionError(f"cluster sampler: cams {cams.shape} and labels {labels.shape} differ")
        rows = np.flatnonzero(labels >= 0)
        if rows.size == 0:
            raise CionError("cluster sampler: every image is an outlier (label -1), nothing to "
                            "train on. Fix: raise DBSCAN's eps")
        order = rows[np.argsort(labels[rows], kind="stable")]
        self._clusters, start, count = np.unique(labels[order], return_index=True, return_counts=True)
        self._members = np.split(order, start[1:])          # rows of each cluster, ascending
        self.labels, self.cams = labels, cams
        self._cache: tuple[int, ClusterPlan] | None = None

    @property
    def num_clusters(self) -> int:
        return len(self._clusters)

    # ---- position -------------------------------------------------------------------------
    def set_position(self, epoch: int, step: int = 0) -> None:
        """Next batch yielded is global batch ``step`` of ``epoch``."""
        self.epoch, self.step = int(epoch), int(step)

    def set_epoch(self, epoch: int) -> None:
        """Start of ``epoch`` (``DistributedSampler``-style alias of ``set_position(epoch, 0)``)."""
        self.set_position(epoch, 0)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed,
                "batch_size": self.batch_size, "k": self.k, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.batch_size = int(state["seed"]), int(state["batch_size"])
        self.k, self.steps = int(state["k"]), int(state["steps"])
        self.p = self.batch_size // self.k
        self._cache = None
        self.set_position(state["epoch"], state["step"])

    # ---- plan -----------------------------------------------------------------------------
    def _group(self, rng: np.random.Generator, members: np.ndarray) -> np.ndarray:
        """K rows of one cluster: an anchor, then K - 1 by camera preference."""
        k = self.k
        anchor = members[int(rng.integers(len(members)))]
        if k == 1:
            return np.array([anchor])
        if len(members) == 1:
            return np.full(k, anchor)
        cam = self.cams[anchor]
        pool = members[(self.cams[members] != cam) & (self.cams[members] >= 0)] if cam >= 0 else \
            members[:0]
        if pool.size == 0:
            pool = members[members != anchor]
        picks = rng.choice(pool, size=k - 1, replace=pool.size < k - 1)
        return np.concatenate([[anchor], picks])

    def plan(self, epoch: int) -> ClusterPlan:
        """The global image sequence of ``epoch``; deterministic in (seed, epoch, labels, cams)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch, _TAG])
        groups_needed = self.steps * self.p
        groups = []
        while len(groups) < groups_needed:
            for c in rng.permutation(self.num_clusters):
                groups.append(self._group(rng, self._members[c]))
                if len(groups) == groups_needed:
                    break
        rows = np.concatenate(groups).astype(np.int64)
        base = np.uint64((self.seed * 1_000_003 + epoch) & 0xFFFFFFFFFFFF) << np.uint64(16)
        with np.errstate(over="ignore"):
            seeds = splitmix64(splitmix64(np.full(rows.size, base ^ np.uint64(_TAG), np.uint64))
                               + np.arange(rows.size, dtype=np.uint64))
        plan = ClusterPlan(rows=rows, labels=self.labels[rows], seeds=seeds, steps=self.steps)
        self._cache = (epoch, plan)
        return plan

    def local_slice(self) -> tuple[int, int]:
        """[start, end) of this rank's part of a global batch."""
        sizes = [len(a) for a in np.array_split(np.arange(self.batch_size), self.world_size)]
        start = sum(sizes[: self.rank])
        return start, start + sizes[self.rank]

    def batch(self, epoch: int, step: int) -> list[tuple[int, int, int]]:
        """This rank's items ``(row, aug_seed, label)`` of global batch ``step`` of ``epoch``."""
        if not 0 <= step < self.steps:
            raise CionError(f"cluster sampler: step {step} outside the epoch's {self.steps} steps")
        plan = self.plan(epoch)
        a, b = self.local_slice()
        sl = slice(step * self.batch_size + a, step * self.batch_size + b)
        return list(zip(plan.rows[sl].tolist(), plan.seeds[sl].tolist(), plan.labels[sl].tolist()))

    def __iter__(self):
        """Batches from the current position to the end of the current epoch (the trainer
        records the position of the batch it trained on; prefetching draws ahead)."""
        epoch = self.epoch
        for step in range(self.step, self.steps):
            yield self.batch(epoch, step)

    def __len__(self) -> int:
        return max(0, self.steps - self.step)
