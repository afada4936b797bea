"""The demo's figures: denoising per level, training curves, zero-shot scores, t-SNE per method
(the paper's Fig. 4), ranked lists. PNGs under ``OUT/figures/``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cion.demo.plan import METHODS, DemoPlan
from cion.plotting import pyplot, save_figure

COLOURS = {"random": "#7f7f7f", "instance": "#1f77b4", "tracklet": "#ff7f0e",
           "cion_video": "#2ca02c", "cion": "#d62728", "oracle": "#9467bd"}


def plot_curves(runs: list[dict], out: Path) -> Path:
    """Loss and teacher entropy against step, one colour per method, one line per seed."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    seen = set()
    for r in runs:
        if not r.get("losses"):
            continue
        step, loss, ent = (np.array(v) for v in zip(*r["losses"]))
        label = r["method"] if r["method"] not in seen else None
        seen.add(r["method"])
        ax[0].plot(step, loss, color=COLOURS[r["method"]], label=label, lw=1.2)
        ax[1].plot(step, ent, color=COLOURS[r["method"]], label=label, lw=1.2)
    ax[0].set_title("loss (Eq. 9)")
    ax[1].set_title("teacher entropy (nats; log(out_dim) = uniform)")
    for a in ax:
        a.set_xlabel("optimiser step")
        a.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_scores(table: dict, out: Path, tuned: dict | None = None) -> Path:
    """Zero-shot mAP and rank-1 per method, and mAP after the short fine-tune when ``tuned``
    has it: bars = mean over seeds, dots = single seeds."""
    plt = pyplot()
    methods = [m for m in METHODS if m in table]
    panels = [(table, "mAP", "zero-shot mAP (%)"), (table, "rank1", "zero-shot rank-1 (%)")]
    if tuned:
        panels.append((tuned, "mAP", "mAP after the short fine-tune (%)"))
    fig, ax = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for a, (scores, key, name) in zip(ax, panels):
        means = [100 * scores[m][key] if m in scores else 0.0 for m in methods]
        a.bar(range(len(methods)), means, color=[COLOURS[m] for m in methods], alpha=0.8)
        for i, m in enumerate(methods):
            vals = [100 * s[key] for s in scores.get(m, {}).get("seeds", [])]
            a.plot([i] * len(vals), vals, "k.", ms=6)
        a.set_xticks(range(len(methods)))
        a.set_xticklabels(methods, fontsize=8)
        a.set_title(name)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_pair_distances(table: dict, out: Path) -> Path:
    """Mean cosine distance between pre-training images by what they share
    (:func:`cion.demo.pairs.measure`): one group of bars per kind of pair, one bar per method
    (mean over seeds), the cross-video margin in the legend."""
    from cion.demo.pairs import MARGIN, PAIR_KINDS

    plt = pyplot()
    methods = [m for m in METHODS if m in table]
    x = np.arange(len(PAIR_KINDS))
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(10, 3.8))
    for k, m in enumerate(methods):
        ax.bar(x + (k - (len(methods) - 1) / 2) * width, [table[m][kind] for kind in PAIR_KINDS],
               width, color=COLOURS[m], label=f"{m} (margin {table[m][MARGIN]:+.2f})")
    ax.set_xticks(x)
    ax.set_xticklabels([k.replace(", ", ",\n") for k in PAIR_KINDS], fontsize=8)
    ax.set_ylabel("mean cosine distance")
    ax.set_title("Pre-training images: how far apart each backbone puts two images that share ...",
                 fontsize=10)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return save_figure(fig, out)


def _benchmark(world: Path):
    from cion.evaluation.retrieval import market_split

    q = market_split(world / "market" / "query")
    g = market_split(world / "market" / "bounding_box_test")
    return q, g


def run_backbone(method: str, runs: list[dict], arch: str, size, seed: int):
    """The backbone of one demo run (``random``: the initialisation the trained runs start from)."""
    import torch

    from cion.models.backbone import build_backbone, load_backbone

    if method == "random":
        torch.manual_seed(seed)
        return build_backbone(arch, size)
    path = next(r["backbone"] for r in runs if r["method"] == method and r["seed"] == seed)
    return load_backbone(arch, path, size)


def ranked_lists(qf, gf, q, g, out: Path, title: str, rows: int = 6, k: int = 8) -> Path:
    """Top-``k`` gallery images of the first ``rows`` queries (Market protocol: same identity
    in the same camera and junk (-1) are not ranked)."""
    from cion.evaluation.figures import plot_ranked_lists

    (qp, qid, qcam), (gp, gid, _) = q, g
    pick = np.linspace(0, len(qp) - 1, rows).astype(int)
    dist = 1.0 - qf[pick] @ gf.T
    valid_rows = rankable(q, g)[pick]
    ranked, hits, labels = [], [], []
    for row, i in enumerate(pick):
        valid = valid_rows[row]
        order = np.flatnonzero(valid)[np.argsort(dist[row, valid], kind="stable")][:k]
        ranked.append(order)
        hits.append(gid[order] == qid[i])
        labels.append(f"id {qid[i]} c{qcam[i] + 1}")       # cameras are 0-based; names say c1..
    return plot_ranked_lists([qp[i] for i in pick], gp, np.array(ranked), np.array(hits), labels,
                             out, title)


def rankable(q, g) -> np.ndarray:
    """(Q, G) bool: gallery images the Market protocol ranks for each query (not junk, not the
    same identity seen by the same camera)."""
    (_, qid, qcam), (_, gid, gcam) = q, g
    same_shot = (gid[None] == qid[:, None]) & (gcam[None] == qcam[:, None])
    return ~same_shot & (gid[None] != -1)


def same_camera_top1(qf, gf, q, g) -> float:
    """Share of queries whose first ranked gallery image (Market protocol) comes from the
    query's own camera. Features that encode the camera look rather than the person push it
    towards 1; :func:`chance_same_camera` is what an uninformed ranking would give."""
    dist = np.where(rankable(q, g), 1.0 - qf @ gf.T, np.inf)
    return float(np.mean(g[2][dist.argmin(1)] == q[2]))


def chance_same_camera(world: Path) -> float:
    """Mean share of a query's rankable gallery images that come from its own camera."""
    q, g = _benchmark(world)
    valid = rankable(q, g)
    same = valid & (g[2][None] == q[2][:, None])
    return float(np.mean(same.sum(1) / valid.sum(1)))


def make_all(out: Path, world: Path, den: dict, runs: list[dict], table: dict, arch: str,
             size, plan: DemoPlan, tuned: dict | None = None) -> dict:
    """Write every figure; returns ``{name: path}``; adds ``same_camera_top1`` (seed
    ``plan.seeds[0]``) to each row of ``table``."""
    from cion.denoise.figure import plot_levels
    from cion.evaluation.figures import plot_tsne
    from cion.evaluation.retrieval import embed_paths

    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figs = {"denoising": plot_levels(den["stats"], fig_dir / "denoising_levels.png",
                                     "CION denoising on the synthetic world (colour-histogram extractor)",
                                     quality=den["quality"]),
            "curves": plot_curves(runs, fig_dir / "training_curves.png"),
            "scores": plot_scores(table, fig_dir / "zero_shot.png", tuned)}
    q, g = _benchmark(world)
    seed = plan.seeds[0]
    for method in METHODS:
        if method not in table:
            continue
        model = run_backbone(method, runs, arch, size, seed)
        qf = embed_paths(model, q[0], size).numpy()
        gf = embed_paths(model, g[0], size).numpy()
        table[method]["same_camera_top1"] = same_camera_top1(qf, gf, q, g)
        feats = np.concatenate([qf, gf])
        ids = np.concatenate([q[1], g[1]])
        is_query = np.r_[np.ones(len(qf), bool), np.zeros(len(gf), bool)]
        figs[f"tsne_{method}"] = plot_tsne(feats, ids, is_query, fig_dir / f"tsne_{method}.png",
                                           max_identities=plan.tsne_identities, seed=0,
                                           title=f"{method}")
        if method in ("random", "cion"):
            figs[f"ranked_{method}"] = ranked_lists(
                qf, gf, q, g, fig_dir / f"ranked_{method}.png",
                f"{method}: top-8 gallery matches (green = same identity)")
    return figs
