"""P x K identity-balanced batches for supervised fine-tuning (batch-hard triplet needs several
images of each identity in a batch).

Identities are visited in *rounds*: each round is a fresh random permutation of all identities,
cut into ``n_ids // P`` batches of P distinct identities (the remainder of the round, fewer than
P identities, is dropped; a different one each round). For each chosen identity K of its images
are drawn: without replacement when it has at least K, with replacement otherwise (an identity
with a single image then contributes K copies of it, which still gives the other identities
negatives but gives it only trivial positives; :attr:`PKSampler.singletons` counts them).

Unlike :class:`cion.data.sampler.IdentityBatchSampler` (pre-training: epochs over images,
curriculum, DDP slices, resumable) this is the plain fine-tuning sampler: an infinite,
seeded stream of batches.
"""
from __future__ import annotations

import itertools

import numpy as np

from cion.errors import CionError


class PKSampler:
    """Infinite stream of (P * K,) index arrays into ``labels``, deterministic given ``seed``.

    Args:
        labels: (N,) identity label of each image (any integers).
        p: identities per batch (P).
        k: images per identity (K).
        seed: every iteration over the sampler starts the same stream from this seed.

    Each batch is ordered identity by identity: rows ``i*K:(i+1)*K`` share one identity.
    """

    def __init__(self, labels, p: int, k: int = 4, seed: int = 0):
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise CionError(f"PKSampler: labels must be a non-empty 1-D array, got shape "
                            f"{labels.shape}")
        if p < 2 or k < 1:
            raise CionError(f"PKSampler: need P >= 2 identities and K >= 1 images per identity "
                            f"per batch, got P={p}, K={k}")
        ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        if len(ids) < 2:
            raise CionError(f"PKSampler: the data has {len(ids)} identity; batch-hard triplet and "
                            "ID losses need at least 2. Fix: train on a set with more identities")
        if p > len(ids):
            raise CionError(f"PKSampler: P={p} identities per batch but the data has only "
                            f"{len(ids)}. Fix: lower the batch size to at most {len(ids)} x K")
        self.p, self.k, self.seed = int(p), int(k), int(seed)
        self.identities = ids
        self.counts = counts
        self.singletons = int((counts < 2).sum())
        # padded (n_ids, max_count) table of row indices, -1 = padding
        order = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        col = np.arange(len(labels)) - np.repeat(starts, counts)
        self._table = np.full((len(ids), counts.max()), -1, dtype=np.int64)
        self._table[inverse[order], col] = order

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def _round(self, rng: np.random.Generator) -> np.ndarray:
        """(n_ids // P, P * K) batches of one round over the identities."""
        n_ids = len(self.identities)
        per_round = n_ids // self.p
        chosen = rng.permutation(n_ids)[:per_round * self.p].reshape(per_round, self.p)
        n = self.counts[chosen]                                   # (b, P) images per identity
        # without replacement: the K smallest of uniform keys over the identity's images
        keys = rng.random((per_round, self.p, self._table.shape[1]))
        keys[np.arange(self._table.shape[1]) >= n[..., None]] = np.inf
        no_repl = np.argsort(keys, axis=2)[..., :self.k] if self.k <= keys.shape[2] else None
        # with replacement: K uniform picks among the identity's images
        repl = (rng.random((per_round, self.p, self.k)) * n[..., None]).astype(np.int64)
        cols = repl if no_repl is None else np.where((n >= self.k)[..., None], no_repl, repl)
        rows = self._table[chosen[..., None], cols]               # (b, P, K)
        return rows.reshape(per_round, self.p * self.k)

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        while True:
            yield from self._round(rng)

    def batches(self, steps: int) -> np.ndarray:
        """The first ``steps`` batches of the stream, (steps, P * K) int64."""
        return np.stack(list(itertools.islice(iter(self), steps))) if steps > 0 else \
            np.zeros((0, self.batch_size), dtype=np.int64)
