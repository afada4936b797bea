"""The ``cion evaluate`` pipeline: dataset -> features -> metrics (+ re-ranking) -> JSON + PNGs."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from cion.evaluation.rank import distance_chunks, evaluate_distance_chunks, prepare_query_gallery
from cion.fileio import atomic_write, ensure_writable_dir

#: Ranks reported in tables (CMC is written in full to the JSON).
REPORT_RANKS = (1, 5, 10, 20)


class _TopK:
    """Collects each query's ``k`` best gallery items as evaluated (junk and same-identity-
    same-camera items removed) while distance chunks stream past."""

    def __init__(self, q_pids, g_pids, q_cams, g_cams, k: int = 10):
        self.qp, self.gp = torch.as_tensor(np.array(q_pids)), torch.as_tensor(np.array(g_pids))
        self.qc, self.gc = torch.as_tensor(np.array(q_cams)), torch.as_tensor(np.array(g_cams))
        self.k = min(k, len(self.gp))
        self.index = np.full((len(self.qp), self.k), -1, dtype=np.int64)

    def __call__(self, chunks: Iterator[tuple[slice, torch.Tensor]]):
        for sl, d in chunks:
            dd = d.detach().to("cpu", torch.float32).clone()
            qp, qc = self.qp[sl][:, None], self.qc[sl][:, None]
            drop = (self.gp[None, :] == -1) | ((self.gp[None, :] == qp) & (self.gc[None, :] == qc) & (qc >= 0))
            dd[drop] = float("inf")
            vals, idx = torch.topk(dd, self.k, dim=1, largest=False, sorted=True)
            # stable order inside the top k: distance, then gallery index
            key = torch.argsort(idx, dim=1)
            vals, idx = vals.gather(1, key), idx.gather(1, key)
            order = torch.sort(vals, dim=1, stable=True).indices
            idx = torch.where(torch.isinf(vals.gather(1, order)), -1, idx.gather(1, order))
            self.index[sl] = idx.numpy()
            yield sl, d


def _summary(res: dict) -> dict:
    out = {"mAP": res["mAP"], "mINP": res["mINP"]}
    for r in REPORT_RANKS:
        if r <= len(res["cmc"]):
            out[f"rank{r}"] = float(res["cmc"][r - 1])
    out["cmc"] = [float(x) for x in res["cmc"]]
    out["num_queries"] = res["num_queries"]
    out["num_valid_queries"] = res["num_valid_queries"]
    out["num_gallery"] = res["num_gallery"]
    return out


def _figures(ds, res: dict, topk: _TopK, qf, gf, out_dir: Path, tag: str, n_show: int = 6) -> list[str]:
    from cion.data.manifest import resolve_paths
    from cion.evaluation.figures import plot_ranked_lists

    qpaths, gpaths = resolve_paths(ds.query), resolve_paths(ds.gallery)
    ap = res["ap"]
    valid = np.flatnonzero(~np.isnan(ap))
    order = valid[np.lexsort((valid, ap[valid]))]        # worst first, ties by query index
    files = []
    gp = ds.gallery["identity"].to_numpy()
    qp = ds.query["identity"].to_numpy()
    for name, pick in (("worst", order[:n_show]), ("best", order[::-1][:n_show])):
        if not len(pick):
            continue
        ranked = topk.index[pick]
        hits = (ranked >= 0) & (gp[ranked.clip(0)] == qp[pick][:, None])
        labels = [f"q{q} id {qp[q]}\nAP {ap[q]:.2f}" for q in pick]
        files.append(str(plot_ranked_lists([qpaths[q] for q in pick], gpaths, ranked, hits, labels,
                                           out_dir / f"ranked_{name}{tag}.png",
                                           f"{name} queries{tag.replace('_', ' ')}: query + top-{ranked.shape[1]}"
                                           " (green = same identity, red = other)")))
    return files


def _extract_readable(ds, model, extract_features, kw, out_dir: Path, skip: bool, Tally):
    """Query and gallery features; unreadable images are listed in ``out_dir/bad_images.txt``
    and either stop the run (one line naming them) or, with ``skip``, are removed from ``ds``
    (in place) and from the features. Returns ``((qf, gf), number skipped)``."""
    from cion.data.manifest import resolve_paths

    feats, bad = [], {}
    for part in ("query", "gallery"):
        paths = resolve_paths(getattr(ds, part))
        tally = Tally(len(paths), None, max_share=1.0, what="evaluate")
        feats.append(extract_features(paths, model, bad_images=tally, **kw))
        bad[part] = (tally.rows, paths)
    listed = [(paths[r], why) for rows, paths in bad.values() for r, why in sorted(rows.items())]
    list_path = out_dir / "bad_images.txt"
    if not listed:
        if list_path.exists():
            list_path.unlink()
        return tuple(feats), 0
    atomic_write(list_path, lambda tmp: Path(tmp).write_text(
        "".join(f"{p}\t{why}\n" for p, why in listed)))
    if not skip:
        from cion.errors import CionError

        raise CionError(f"{len(listed)} query / gallery image(s) cannot be read, e.g. "
                        f"{listed[0][0]} ({listed[0][1]}); all are listed in {list_path}. Fix: "
                        "repair or replace them, or evaluate without them (--skip-bad-images)")
    for k, part in enumerate(("query", "gallery")):
        rows = bad[part][0]
        keep = np.setdiff1d(np.arange(len(feats[k])), np.fromiter(rows, np.int64, len(rows)))
        feats[k] = feats[k][keep]
        setattr(ds, part, getattr(ds, part).iloc[keep].reset_index(drop=True))
    return tuple(feats), len(listed)


def evaluate_model(model_spec: str, dataset: str, root, *, checkpoint=None, out_dir="cion_eval",
                   rerank: bool = False, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                   metric: str = "cosine", batch_size: int = 64, flip: bool = False,
                   img_size=None, device=None, workers: int = 0, max_rank: int = 50,
                   figures: bool = True, progress: bool = True, echo=print,
                   skip_bad_images: bool = False) -> dict:
    """Evaluate ``model_spec`` on ``dataset`` at ``root``; writes ``metrics.json`` and PNGs to
    ``out_dir`` and returns the JSON's content.

    Unreadable query / gallery images (corrupt, truncated, empty, missing) are listed in
    ``out_dir/bad_images.txt`` and stop the run (a query silently left out would change the
    metrics), unless ``skip_bad_images``: then they are left out and counted in the JSON.
    """
    from cion.data.images import BadImageTally
    from cion.data.readers import read_dataset
    from cion.extract import extract_features, load_model

    ds = read_dataset(dataset, root)
    echo(ds.describe())
    model = load_model(model_spec, checkpoint=checkpoint, img_size=img_size)
    out_dir = ensure_writable_dir(out_dir)    # only once the inputs are valid: no stray folder
    t0 = time.perf_counter()
    kw = dict(batch_size=batch_size, flip=flip, dtype="float32", device=device, workers=workers,
              progress=progress)
    (qf, gf), skipped = _extract_readable(ds, model, extract_features, kw, out_dir,
                                          skip_bad_images, BadImageTally)
    t_extract = time.perf_counter() - t0
    labels = (ds.query["identity"].to_numpy(), ds.gallery["identity"].to_numpy(),
              ds.query["camera"].to_numpy(), ds.gallery["camera"].to_numpy())
    nq, ng = len(qf), len(gf)

    t0 = time.perf_counter()
    q, g = prepare_query_gallery(qf, gf, metric, device)
    top = _TopK(*labels)
    chunks = distance_chunks(q, g, metric)
    res = evaluate_distance_chunks(top(chunks), nq, ng, *labels, max_rank=max_rank, device=q.device)
    t_eval = time.perf_counter() - t0
    report = {"model": model.name, "dataset": ds.name, "version": ds.version, "root": str(ds.root),
              "notes": ds.notes, "metric": metric, "flip": flip, "img_size": list(model.img_size),
              "feature_dim": model.dim, "seconds": {"extract": round(t_extract, 3),
                                                    "evaluate": round(t_eval, 3)},
              "plain": _summary(res), "bad_images_skipped": skipped}
    files = []
    if figures:
        files += _figures(ds, res, top, qf, gf, out_dir, "")
    if rerank:
        from cion.evaluation.rerank import rerank_features

        t0 = time.perf_counter()
        top_rr = _TopK(*labels)
        stream = rerank_features(q, g, k1, k2, lambda_value, metric=metric, stream=True,
                                 progress=progress)
        res_rr = evaluate_distance_chunks(top_rr(stream), nq, ng, *labels, max_rank=max_rank)
        report["seconds"]["rerank"] = round(time.perf_counter() - t0, 3)
        report["reranked"] = {**_summary(res_rr), "k1": k1, "k2": k2, "lambda": lambda_value}
        if figures:
            files += _figures(ds, res_rr, top_rr, qf, gf, out_dir, "_reranked")
    if figures:
        from cion.evaluation.figures import plot_cmc, plot_tsne

        extra = {"re-ranked": report["reranked"]["cmc"]} if rerank else None
        files.append(str(plot_cmc(res["cmc"], out_dir / "cmc.png", model.name, extra)))
        feats = np.concatenate([np.asarray(qf), np.asarray(gf)])
        ids = np.concatenate([labels[0], labels[1]])
        is_q = np.r_[np.ones(nq, bool), np.zeros(ng, bool)]
        files.append(str(plot_tsne(feats, ids, is_q, out_dir / "tsne.png",
                                   title=f"{model.name} on {ds.name}")))
    report["figures"] = files
    report["per_query"] = {"query_path": ds.query["path"].tolist(),
                           "ap": [None if np.isnan(a) else float(a) for a in res["ap"]],
                           "first_hit": res["first_hit"].tolist()}
    atomic_write(out_dir / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    report["json"] = str(out_dir / "metrics.json")
    return report


def format_table(report: dict) -> str:
    """Plain-text table of the headline numbers (percent)."""
    cols = [("plain", report["plain"])]
    if "reranked" in report:
        cols.append(("re-ranked", report["reranked"]))
    keys = ["mAP"] + [f"rank{r}" for r in REPORT_RANKS if f"rank{r}" in report["plain"]] + ["mINP"]
    head = f"{'metric':<8}" + "".join(f"{name:>12}" for name, _ in cols)
    lines = [f"{report['model']} on {report['dataset']} {report.get('version', '')}".rstrip(),
             head, "-" * len(head)]
    for k in keys:
        label = k.replace("rank", "Rank-")
        lines.append(f"{label:<8}" + "".join(f"{100 * c[k]:>11.2f}%" for _, c in cols))
    p = report["plain"]
    lines.append(f"queries {p['num_valid_queries']}/{p['num_queries']} with a positive, "
                 f"gallery {p['num_gallery']}")
    return "\n".join(lines)
