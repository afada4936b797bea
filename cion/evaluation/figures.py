"""Figures a person looks at after an evaluation: ranked lists and a t-SNE of identities (PNG)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from cion.plotting import pyplot, save_figure


def _thumb(path: str, size=(128, 64)) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((size[1], size[0]), Image.BILINEAR))


def plot_ranked_lists(query_paths: Sequence[str], gallery_paths: Sequence[str],
                      ranked: np.ndarray, hits: np.ndarray, labels: Sequence[str],
                      out: str | os.PathLike, title: str) -> Path:
    """One row per query: the query image, then its top-k gallery images framed green (same
    identity) or red (other identity or distractor).

    Args:
        query_paths: (R,) image files of the queries shown.
        gallery_paths: all gallery image files.
        ranked: (R, k) gallery indices in ranking order (as evaluated: junk and same-camera
            matches removed).
        hits: (R, k) bool, True where the gallery item has the query's identity.
        labels: (R,) text beside each query (e.g. "AP 0.12").
    """
    plt = pyplot()
    r, k = ranked.shape
    fig, axes = plt.subplots(r, k + 1, figsize=(1.0 * (k + 1), 2.0 * r + 0.4), squeeze=False)
    for i in range(r):  # a handful of rows of thumbnails: drawing is per image by nature
        ax = axes[i, 0]
        ax.imshow(_thumb(query_paths[i]))
        ax.set_title(labels[i], fontsize=7)
        for side in ax.spines.values():
            side.set_edgecolor("black")
            side.set_linewidth(3)
        for j in range(k):
            ax = axes[i, j + 1]
            if ranked[i, j] < 0:
                ax.axis("off")
                continue
            ax.imshow(_thumb(gallery_paths[ranked[i, j]]))
            colour = "#1a9e3a" if hits[i, j] else "#d62728"
            for side in ax.spines.values():
                side.set_edgecolor(colour)
                side.set_linewidth(4)
            if i == 0:
                ax.set_title(f"#{j + 1}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, dpi=90)


def plot_tsne(features: np.ndarray, identities: np.ndarray, is_query: np.ndarray,
              out: str | os.PathLike, max_identities: int = 15, seed: int = 0,
              title: str = "t-SNE of test features") -> Path:
    """2-D t-SNE of the images of up to ``max_identities`` identities (those with the most
    images; distractors and junk left out); colour = identity, star = query, dot = gallery."""
    from sklearn.manifold import TSNE

    plt = pyplot()
    ids = np.asarray(identities)
    uniq, counts = np.unique(ids[ids > 0], return_counts=True)
    order = np.lexsort((uniq, -counts))              # most images first, ties by id
    chosen = uniq[order[:max_identities]]
    sel = np.flatnonzero(np.isin(ids, chosen))
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    if len(sel) >= 5:
        x = np.asarray(features[sel], dtype=np.float32)
        emb = TSNE(n_components=2, perplexity=float(min(30, max(2, (len(sel) - 1) // 3))),
                   init="pca", random_state=seed).fit_transform(x)
        cmap = plt.get_cmap("tab20")
        for c, pid in enumerate(chosen):
            m = ids[sel] == pid
            q = is_query[sel] & m
            g = ~is_query[sel] & m
            ax.scatter(emb[g, 0], emb[g, 1], s=18, color=cmap(c % 20), label=f"id {pid}")
            ax.scatter(emb[q, 0], emb[q, 1], s=120, marker="*", color=cmap(c % 20),
                       edgecolors="black", linewidths=0.6)
        ax.legend(fontsize=6, ncol=2, loc="best", markerscale=0.8)
    else:
        ax.text(0.5, 0.5, "too few images for a t-SNE", ha="center", va="center")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title} ({len(chosen)} identities; star = query)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_cmc(cmc: np.ndarray, out: str | os.PathLike, label: str, extra: dict | None = None) -> Path:
    """CMC curve (rank 1..len) of one or more runs; ``extra`` maps label -> another curve."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, curve in {label: cmc, **(extra or {})}.items():
        ax.plot(np.arange(1, len(curve) + 1), 100 * np.asarray(curve), label=name)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)
