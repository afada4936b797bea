"""Cluster Contrast's clustering and cluster memory (Dai et al. 2021), the unsupervised (USL)
and domain-adaptive (UDA) fine-tuning of the paper's Table 2 (Sec. 4.1).

Every epoch: features of all training images -> :func:`cion.finetune.jaccard.jaccard_distance`
-> :func:`cluster_dbscan` (pseudo-labels, -1 = outlier, dropped for the epoch) ->
:func:`cluster_centroids` -> :meth:`ClusterMemory.reset`; then each batch is scored against the
memory (:meth:`ClusterMemory.forward`, the InfoNCE-style loss over clusters) and the memory
follows the batch (:meth:`ClusterMemory.update`, momentum update).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from cion.errors import CionError


def cluster_dbscan(dist, eps: float, min_samples: int = 4) -> np.ndarray:
    """DBSCAN (scikit-learn, ``metric="precomputed"``) on a distance matrix.

    Args:
        dist: (N, N) distances, either the sparse CSR matrix of
            :func:`cion.finetune.jaccard.jaccard_distance` (unstored pairs = distance >= 1,
            stored zeros count) or a dense array.
        eps: neighbourhood radius (Cluster Contrast: 0.6 Market-1501, 0.7 MSMT17); must be < 1
            for a sparse matrix (pairs at distance 1 are not stored).
        min_samples: points (itself included) within ``eps`` that make a core point.

    Returns:
        (N,) int64 labels 0..C-1, -1 for outliers.
    """
    if not 0.0 < float(eps) < 1.0 and sp.issparse(dist):
        raise CionError(f"DBSCAN eps must be in (0, 1) on the sparse Jaccard distance, got {eps}")
    if min_samples < 1:
        raise CionError(f"DBSCAN min_samples must be >= 1, got {min_samples}")
    from sklearn.cluster import DBSCAN

    if sp.issparse(dist):
        from sklearn.neighbors import sort_graph_by_row_values

        dist = sp.csr_matrix(dist)
        if dist.shape[0] != dist.shape[1]:
            raise CionError(f"cluster_dbscan needs a square (N, N) matrix, got {dist.shape}")
        # rows sorted by value (sklearn's precondition for a precomputed graph; it would otherwise
        # copy and warn); explicit zeros are kept
        dist = sort_graph_by_row_values(dist, copy=True, warn_when_not_sorted=False)
    labels = DBSCAN(eps=float(eps), min_samples=int(min_samples), metric="precomputed").fit_predict(dist)
    return labels.astype(np.int64)


def cluster_centroids(features, labels):
    """L2-normalised mean feature of each cluster.

    Args:
        features: (N, D) features (numpy or torch).
        labels: (N,) int cluster labels 0..C-1, -1 (outliers) ignored; every cluster 0..C-1 must
            have at least one member.

    Returns:
        (C, D) float32, the same kind (numpy / torch, device) as ``features``.
    """
    is_torch = isinstance(features, torch.Tensor)
    x = features.detach().float() if is_torch else torch.from_numpy(np.asarray(features, np.float32))
    y = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels),
                        dtype=torch.int64).to(x.device)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise CionError(f"cluster_centroids: expected features (N, D) and labels (N,), got "
                        f"{tuple(x.shape)} and {tuple(y.shape)}")
    keep = y >= 0
    if not bool(keep.any()):
        raise CionError("cluster_centroids: every image is an outlier (label -1); no cluster to "
                        "take a centroid of. Fix: raise DBSCAN's eps")
    c = int(y.max()) + 1
    sums = torch.zeros(c, x.shape[1], dtype=torch.float32, device=x.device)
    sums.index_add_(0, y[keep], x[keep])
    counts = torch.bincount(y[keep], minlength=c)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise CionError(f"cluster_centroids: labels must be 0..C-1 without gaps; clusters "
                        f"{missing} have no member")
    cent = F.normalize(sums / counts[:, None], dim=1)
    return cent if is_torch else cent.numpy()


class ClusterMemory(nn.Module):
    """Memory of C cluster centroids, the classifier of Cluster Contrast.

    ``loss = cross_entropy(f . C^T / temp, y)`` for a batch of L2-normalised features f (B, D)
    and their cluster labels y; the memory gets no gradient and moves with :meth:`update`:

    - ``"hard"`` (the authors'): for each cluster in the batch, its instance *least* similar to
      the current centroid, ``c <- m c + (1 - m) x_hard``, then ``c <- c / |c|``;
    - ``"plain"``: every instance in batch order, ``c <- m c + (1 - m) x``, renormalised each
      time.

    The centroids are the buffer ``features`` (C, D) float32, so they are saved in and restored
    from ``state_dict`` (loading resizes it to the stored C). Under DDP, call :meth:`update` on
    every rank with the all-gathered batch (same features, same order) so the memories stay equal.

    Args:
        num_features: D.
        num_clusters: initial C (the buffer is resized by :meth:`reset`); 0 is fine.
        temp: softmax temperature (0.05).
        momentum: m (authors: 0.2).
        update: ``"hard"`` or ``"plain"``.
    """

    def __init__(self, num_features: int, num_clusters: int = 0, temp: float = 0.05,
                 momentum: float = 0.2, update: str = "hard"):
        super().__init__()
        if update not in ("hard", "plain"):
            raise CionError(f"cluster memory update must be 'hard' or 'plain', got {update!r}")
        if not 0.0 <= momentum < 1.0:
            raise CionError(f"cluster memory momentum must be in [0, 1), got {momentum}")
        if temp <= 0:
            raise CionError(f"cluster memory temperature must be > 0, got {temp}")
        self.num_features = int(num_features)
        self.temp, self.momentum, self.mode = float(temp), float(momentum), update
        self.register_buffer("features", torch.zeros(int(num_clusters), self.num_features))

    @property
    def num_clusters(self) -> int:
        return self.features.shape[0]

    @torch.no_grad()
    def reset(self, centroids) -> None:
        """Replace the memory with ``centroids`` (C, D) (e.g. :func:`cluster_centroids`),
        renormalised, float32, on the memory's current device."""
        c = torch.as_tensor(np.asarray(centroids) if not isinstance(centroids, torch.Tensor)
                            else centroids).detach().float()
        if c.ndim != 2 or c.shape[1] != self.num_features or c.shape[0] == 0:
            raise CionError(f"ClusterMemory.reset: expected (C, {self.num_features}) centroids "
                            f"with C >= 1, got {tuple(c.shape)}")
        self.features = F.normalize(c, dim=1).to(self.features.device).contiguous()

    def _check(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.num_features or \
                targets.shape != (features.shape[0],):
            raise CionError(f"ClusterMemory: expected features (B, {self.num_features}) and "
                            f"targets (B,), got {tuple(features.shape)} and {tuple(targets.shape)}")
        # value check on CPU only: on an accelerator it would cost a host sync every step (an
        # out-of-range target still fails there, in cross_entropy / indexing)
        if targets.device.type == "cpu" and targets.numel() and \
                (int(targets.min()) < 0 or int(targets.max()) >= self.num_clusters):
            raise CionError(f"ClusterMemory: targets must be cluster labels 0..{self.num_clusters - 1} "
                            f"(outliers removed), got {int(targets.min())}..{int(targets.max())}")

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar loss: cross-entropy of ``features (B, D) @ memory^T / temp`` against
        ``targets (B,)``, computed in float32 (also under autocast)."""
        self._check(features, targets)
        with torch.autocast(device_type=features.device.type, enabled=False):
            logits = features.float() @ self.features.t() / self.temp
            return F.cross_entropy(logits, targets)

    @torch.no_grad()
    def update(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        """Momentum update of the centroids of the clusters in the batch.

        Args:
            features: (B, D) L2-normalised features (detached; all ranks' batches under DDP).
            targets: (B,) their cluster labels.
        """
        self._check(features, targets)
        if targets.numel() == 0:
            return
        x = features.detach().float().to(self.features.device)
        y = targets.to(self.features.device, torch.int64)
        m = self.momentum
        mem = self.features
        if self.mode == "hard":
            sim = (x * mem[y]).sum(1)                                   # (B,) to own centroid
            lowest = torch.full((self.num_clusters,), float("inf"), device=x.device)
            lowest.scatter_reduce_(0, y, sim, reduce="amin")
            # the first instance (batch order) reaching its cluster's minimum
            is_min = sim == lowest[y]
            pos = torch.arange(len(y), device=x.device)
            big = torch.full((self.num_clusters,), len(y), device=x.device, dtype=torch.int64)
            first = big.scatter_reduce(0, y, torch.where(is_min, pos, big[y]), reduce="amin")
            # every cluster computed, those absent from the batch kept (no host sync)
            moved = F.normalize(m * mem + (1 - m) * x[first.clamp(max=len(y) - 1)], dim=1)
            mem.copy_(torch.where((first < len(y))[:, None], moved, mem))
            return
        # plain: occurrence t of every cluster is applied in round t (clusters are independent)
        order = torch.argsort(y, stable=True)
        ys = y[order]
        start = torch.searchsorted(ys, ys, right=False)
        occurrence = torch.empty_like(y)
        occurrence[order] = torch.arange(len(y), device=y.device) - start
        for t in range(int(occurrence.max()) + 1 if len(y) else 0):
            sel = occurrence == t
            c = y[sel]
            mem[c] = F.normalize(m * mem[c] + (1 - m) * x[sel], dim=1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = state_dict.get(prefix + "features")
        if stored is not None and stored.shape != self.features.shape:
            self.features = torch.empty_like(stored, device=self.features.device,
                                             dtype=torch.float32)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"num_features={self.num_features}, num_clusters={self.num_clusters}, "
                f"temp={self.temp}, momentum={self.momentum}, update={self.mode!r}")
