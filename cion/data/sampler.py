"""Identity sampler: batches of identity groups (P identities x K images), the CION curriculum
on K (images per identity, the paper's ``N_id``, Sec. 4.1: 2, then 4, 6, 8 from epochs 40, 60,
80 of 100), disjoint per DDP rank, seeded and exactly resumable. The K images of an identity
in a batch form the identity set X of Eq. 9.

An *epoch* is one pass over the images: every identity's images are shuffled and cut into
chunks of K (an identity with fewer than K images gives one chunk drawn with replacement; a
remainder shorter than K is dropped, as in the usual ReID identity sampler). The chunks of all
identities are put in a random order that spreads each identity's chunks evenly over the epoch
(chunk j of an identity with c chunks gets the sort key ``(j + u) / c``, ``u ~ U(0, 1)``), and
the flat image sequence is cut into global batches of exactly ``batch_size`` images (any size:
no "multiple of 24" rule). The last incomplete batch is dropped.

DDP: global batch ``s`` is split into ``world_size`` contiguous slices (``np.array_split``
sizes), rank r takes slice r, so ranks see disjoint images, and the *global* batch is the same
for any number of processes. When ``batch_size / world_size`` is a multiple of K, identity
groups never straddle ranks.

Everything is a function of ``(seed, epoch, position)``: the plan of an epoch is rebuilt from
them, and every sample carries its own augmentation seed, so a run resumed at
``(epoch, step)`` draws exactly the batches (and crops) the uninterrupted run drew, whatever
the number of data-loader workers. ``state_dict()`` holds the position and the curriculum.

Yields, per step, a list of ``(row, aug_seed, label)`` tuples for this rank (a DataLoader
``batch_sampler``); ``row`` indexes the manifest passed in.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cion.errors import CionError

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised SplitMix64 hash of uint64 values (well-mixed 64-bit seeds)."""
    with np.errstate(over="ignore"):
        z = (x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def default_curriculum(epochs: int, ks=(2, 4, 6, 8), at=(0.0, 0.4, 0.6, 0.8)) -> list[list[int]]:
    """CION's N_id curriculum (paper Sec. 4.1) scaled to ``epochs``: K = 2, 4, 6, 8 from 0%, 40%,
    60%, 80% of training.

    >>> default_curriculum(100)
    [[0, 2], [40, 4], [60, 6], [80, 8]]
    """
    out: dict[int, int] = {}
    for frac, k in zip(at, ks):
        # later stages start at epoch >= 1, so short runs still begin with the first K;
        # a later stage starting the same epoch as an earlier one replaces it
        out[int(round(frac * epochs)) if frac == 0 else max(1, int(round(frac * epochs)))] = k
    return [[e, k] for e, k in sorted(out.items())]


def check_curriculum(curriculum) -> list[list[int]]:
    """Validate (epoch, K) pairs: first at epoch 0, epochs strictly increasing, K >= 1."""
    try:
        pairs = [[int(e), int(k)] for e, k in curriculum]
    except (TypeError, ValueError):
        raise CionError(f"curriculum must be a list of [epoch, K] pairs, got {curriculum!r}. "
                        "Fix: e.g. [[0, 2], [40, 4], [60, 6], [80, 8]]") from None
    if not pairs or pairs[0][0] != 0:
        raise CionError(f"curriculum {pairs} must start at epoch 0. Fix: add [0, K] first")
    if any(b[0] <= a[0] for a, b in zip(pairs, pairs[1:])):
        raise CionError(f"curriculum {pairs}: epochs must be strictly increasing")
    if any(k < 1 for _, k in pairs):
        raise CionError(f"curriculum {pairs}: K (images per identity) must be >= 1")
    return pairs


def k_at_epoch(curriculum, epoch: int) -> int:
    """Images per identity for ``epoch`` (the last pair whose epoch <= ``epoch``)."""
    k = curriculum[0][1]
    for e, kk in curriculum:
        if e <= epoch:
            k = kk
    return k


@dataclass
class EpochPlan:
    """The image sequence of one epoch (global, all ranks): rows, labels, augmentation seeds."""
    rows: np.ndarray      # (N,) int64 manifest rows
    labels: np.ndarray    # (N,) int64 identity labels
    seeds: np.ndarray     # (N,) uint64 augmentation seeds
    k: int
    steps: int            # full global batches in the epoch


class IdentityBatchSampler:
    """Batch sampler of identity groups; see the module docstring.

    Args:
        identities: (N,) identity label of every manifest row; rows with label < 0 are skipped.
        batch_size: GLOBAL batch size in images (all ranks together).
        curriculum: list of [epoch, K] pairs (see :func:`default_curriculum`).
        seed: everything random is a function of it.
        rank, world_size: this process's DDP rank and the number of processes.
    """

    def __init__(self, identities, batch_size: int, curriculum, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        labels = np.asarray(identities, dtype=np.int64)
        self.rows_all = np.flatnonzero(labels >= 0)
        if self.rows_all.size == 0:
            raise CionError("no image has an identity (all labels are -1). Fix: run `cion denoise` "
                            "or fill the manifest's 'identity' column")
        self.labels_all = labels[self.rows_all]
        if batch_size < world_size:
            raise CionError(f"batch size {batch_size} is smaller than the {world_size} processes. "
                            "Fix: use a batch size of at least one image per process")
        self.batch_size = int(batch_size)
        self.curriculum = check_curriculum(curriculum)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch, self.step = 0, 0
        self._cache: tuple[int, EpochPlan] | None = None
        # identities as contiguous runs of rows (sorted by label, stable)
        order = np.argsort(self.labels_all, kind="stable")
        self._sorted_rows = self.rows_all[order]
        uniq, start, count = np.unique(self.labels_all[order], return_index=True, return_counts=True)
        self._ids, self._start, self._count = uniq, start, count

    # ---- position -------------------------------------------------------------------------
    def set_position(self, epoch: int, step: int = 0) -> None:
        """Next batch yielded is global batch ``step`` of ``epoch``."""
        self.epoch, self.step = int(epoch), int(step)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed,
                "batch_size": self.batch_size, "curriculum": self.curriculum}

    def load_state_dict(self, state: dict) -> None:
        self.curriculum = check_curriculum(state["curriculum"])
        self.seed, self.batch_size = int(state["seed"]), int(state["batch_size"])
        self.set_position(state["epoch"], state["step"])

    def k(self, epoch: int | None = None) -> int:
        return k_at_epoch(self.curriculum, self.epoch if epoch is None else epoch)

    # ---- plan -----------------------------------------------------------------------------
    def plan(self, epoch: int) -> EpochPlan:
        """The (global) image sequence of ``epoch``; deterministic in (seed, epoch)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        k = self.k(epoch)
        rng = np.random.default_rng([self.seed, epoch, 0xC10])
        n_ids = self._ids.size
        count = self._count
        # shuffle rows inside each identity: sort by (identity, random key)
        keys = rng.random(self._sorted_rows.size)
        ident_of_row = np.repeat(np.arange(n_ids), count)
        perm = np.lexsort((keys, ident_of_row))
        shuffled = self._sorted_rows[perm]
        # chunks: identity i gives c_i = max(1, n_i // K) chunks of K
        chunks = np.maximum(1, count // k)
        chunk_ident = np.repeat(np.arange(n_ids), chunks)
        chunk_j = np.arange(chunk_ident.size) - np.repeat(np.cumsum(chunks) - chunks, chunks)
        slot = np.arange(k)
        # position (within the identity) of every image of every chunk; identities with fewer
        # than K images draw positions with replacement
        pos = chunk_j[:, None] * k + slot[None, :]
        n_i = count[chunk_ident][:, None]
        small = n_i < k
        if small.any():
            draws = np.floor(rng.random(pos.shape) * n_i).astype(np.int64)
            pos = np.where(small, draws, pos)
        chunk_rows = shuffled[(self._start[chunk_ident][:, None] + pos)]
        # spread each identity's chunks over the epoch (stratified random keys)
        order = np.argsort((chunk_j + rng.random(chunk_j.size)) / chunks[chunk_ident], kind="stable")
        rows = chunk_rows[order].reshape(-1)
        labels = np.repeat(self._ids[chunk_ident[order]], k)
        steps = rows.size // self.batch_size
        if steps == 0:
            raise CionError(f"the batch size {self.batch_size} is larger than the {rows.size} "
                            f"images an epoch yields at {k} images per identity. Fix: lower "
                            "--batch-size or add images")
        base = np.uint64((self.seed * 1_000_003 + epoch) & 0xFFFFFFFFFFFF) << np.uint64(16)
        with np.errstate(over="ignore"):
            seeds = splitmix64(splitmix64(np.full(rows.size, base, np.uint64))
                               + np.arange(rows.size, dtype=np.uint64))
        plan = EpochPlan(rows=rows.astype(np.int64), labels=labels, seeds=seeds, k=k, steps=steps)
        self._cache = (epoch, plan)
        return plan

    def steps_in_epoch(self, epoch: int | None = None) -> int:
        return self.plan(self.epoch if epoch is None else epoch).steps

    def local_slice(self) -> tuple[int, int]:
        """[start, end) of this rank's part of a global batch."""
        sizes = [len(a) for a in np.array_split(np.arange(self.batch_size), self.world_size)]
        start = sum(sizes[: self.rank])
        return start, start + sizes[self.rank]

    def batch(self, epoch: int, step: int) -> list[tuple[int, int, int]]:
        """This rank's items ``(row, aug_seed, label)`` of global batch ``step`` of ``epoch``."""
        plan = self.plan(epoch)
        a, b = self.local_slice()
        sl = slice(step * self.batch_size + a, step * self.batch_size + b)
        return list(zip(plan.rows[sl].tolist(), plan.seeds[sl].tolist(), plan.labels[sl].tolist()))

    def __iter__(self):
        """Batches from the current position to the end of the current epoch.

        The position advances as batches are *drawn*; the trainer records the position of the
        batch it trained on (data-loader prefetching makes the two differ).
        """
        epoch, steps = self.epoch, self.steps_in_epoch()
        for step in range(self.step, steps):
            yield self.batch(epoch, step)

    def __len__(self) -> int:
        return max(0, self.steps_in_epoch() - self.step)
