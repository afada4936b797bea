"""Scoring an ingestion run against MOTChallenge ground truth.

Tracking metrics come from the ``trackers`` package's evaluation (its matching and metric code
follows TrackEval): HOTA (Luiten et al., IJCV 2021), IDF1 (Ristani et al., ECCV-W 2016) and MOTA
(CLEAR MOT, Bernardin & Stiefelhagen 2008), per video and combined over videos. Two figures that
matter for ReID pre-training are computed here:

* **tracklet purity**: each written crop is matched (IoU >= 0.5, one-to-one per frame) to a ground
  truth person, or to none (a false detection); purity is the share of crops that belong to
  their tracklet's majority label, over all crops (``purity``) and averaged per tracklet
  (``purity_per_tracklet``). An ID switch inside a tracklet lowers it; it is the noise that
  CION's tracklet-level denoising (paper Sec. 3.2, Eq. 1-2) has to remove.
* **detection recall**: share of ground-truth boxes (class 1, conf 1) in the processed frames that
  some detection matches at IoU >= 0.5, before tracking; ``detection_precision`` is the share of
  detections matched to a person (detections on ignored, hard ground truth are left out).

Only processed frames are scored (with ``--every N``, frames 0, N, 2N, ...).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from cion.errors import CionError
from cion.fileio import atomic_write
from cion.ingest.boxes import iou_matrix
from cion.ingest.decode import video_key

IOU = 0.5


def match_boxes(a: np.ndarray, b: np.ndarray, threshold: float = IOU) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of boxes ``a`` (N, 4) and ``b`` (M, 4) (x1 y1 x2 y2) that maximises the
    summed IoU over pairs with IoU >= ``threshold``. Returns index arrays (ia, ib)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    iou = iou_matrix(a, b)
    sim = np.where(iou >= threshold - 1e-9, iou, 0.0)
    ia, ib = linear_sum_assignment(sim, maximize=True)
    ok = sim[ia, ib] > 0
    return ia[ok].astype(np.int64), ib[ok].astype(np.int64)


def read_mot(path: str | os.PathLike) -> pd.DataFrame:
    """A MOTChallenge text file -> DataFrame with frame (1-based), id, x1, y1, x2, y2, conf, cls
    (cls 1 when absent). An empty file gives an empty frame."""
    cols = ["frame", "id", "x1", "y1", "x2", "y2", "conf", "cls"]
    text = Path(path).read_text().strip()
    if not text:
        return pd.DataFrame({c: np.zeros(0) for c in cols})
    arr = np.array([[float(v) for v in line.replace(" ", "").split(",")[:8]]
                    + [1.0] * max(0, 8 - len(line.split(",")))
                    for line in text.splitlines() if line.strip()], dtype=np.float64)
    df = pd.DataFrame({"frame": arr[:, 0].astype(np.int64), "id": arr[:, 1].astype(np.int64),
                       "x1": arr[:, 2], "y1": arr[:, 3], "x2": arr[:, 2] + arr[:, 4],
                       "y2": arr[:, 3] + arr[:, 5], "conf": arr[:, 6], "cls": arr[:, 7].astype(np.int64)})
    return df


def tracklet_purity(frames: np.ndarray, tracklets: np.ndarray, boxes: np.ndarray,
                    gt: pd.DataFrame) -> tuple[dict, np.ndarray]:
    """Purity of crops given as (frame 1-based, tracklet, box) against ground truth ``gt``
    (all its rows, hard ones included: a hidden person's crop is still that person).

    Returns ({purity, purity_per_tracklet, false_crop_share, tracklets, crops}, labels (N,):
    the ground-truth id of each crop, -1 for none)."""
    frames, tracklets = np.asarray(frames), np.asarray(tracklets)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.full(len(frames), -1, np.int64)
    gt_by_frame = {f: g for f, g in gt.groupby("frame")}
    for f in np.unique(frames):
        rows = np.flatnonzero(frames == f)
        g = gt_by_frame.get(f)
        if g is None:
            continue
        ia, ib = match_boxes(boxes[rows], g[["x1", "y1", "x2", "y2"]].to_numpy())
        labels[rows[ia]] = g["id"].to_numpy()[ib]
    if len(frames) == 0:
        return {"purity": None, "purity_per_tracklet": None, "false_crop_share": None,
                "tracklets": 0, "crops": 0}, labels
    table = pd.DataFrame({"t": tracklets, "label": labels})
    counts = table.groupby(["t", "label"]).size()
    majority = counts.groupby(level="t").max()
    sizes = counts.groupby(level="t").sum()
    return {"purity": float(majority.sum() / sizes.sum()),
            "purity_per_tracklet": float((majority / sizes).mean()),
            "false_crop_share": float((labels < 0).mean()),
            "tracklets": int(len(sizes)), "crops": int(len(frames))}, labels


def detection_scores(dets: pd.DataFrame, gt: pd.DataFrame) -> dict:
    """Detection recall / precision at IoU 0.5 (see module docstring); frames as in both tables."""
    valid = (gt["cls"] == 1) & (gt["conf"] != 0)
    matched_valid = matched_hard = 0
    d_by_frame = {f: d for f, d in dets.groupby("frame")}
    for f, g in gt.groupby("frame"):
        d = d_by_frame.get(f)
        if d is None:
            continue
        ia, ib = match_boxes(g[["x1", "y1", "x2", "y2"]].to_numpy(), d[["x1", "y1", "x2", "y2"]].to_numpy())
        v = valid.loc[g.index].to_numpy()[ia]
        matched_valid += int(v.sum())
        matched_hard += int((~v).sum())
    n_gt, n_det = int(valid.sum()), len(dets)
    return {"detection_recall": matched_valid / n_gt if n_gt else None,
            "detection_precision": matched_valid / (n_det - matched_hard) if n_det > matched_hard else None,
            "gt_boxes": n_gt, "detections": n_det}


def _processed(df: pd.DataFrame, every: int, frames_read: int) -> pd.DataFrame:
    """Rows of processed frames, their frame renumbered 1.. in processing order."""
    f0 = df["frame"].to_numpy() - 1
    keep = (f0 % every == 0) & (f0 < frames_read)
    out = df[keep].copy()
    out["frame"] = f0[keep] // every + 1
    return out


def _to_mot_data(df: pd.DataFrame) -> dict:
    from trackers.io.mot import _MOTFrameData

    data = {}
    for f, g in df.groupby("frame"):
        data[int(f)] = _MOTFrameData(
            ids=g["id"].to_numpy().astype(np.intp),
            boxes=np.stack([g["x1"], g["y1"], g["x2"] - g["x1"], g["y2"] - g["y1"]], 1).astype(np.float64),
            confidences=g["conf"].to_numpy().astype(np.float64),
            classes=g["cls"].to_numpy().astype(np.intp))
    return data


def tracking_metrics(gt: pd.DataFrame, tracks: pd.DataFrame, num_frames: int) -> dict:
    """HOTA / CLEAR / Identity metric dicts of the ``trackers`` package for one sequence
    (frames 1..num_frames; either table may be empty)."""
    # the public evaluate_mot_sequence() reads files and refuses an empty tracker file (a video
    # where nothing was tracked); the same preparation is reached through its helper instead
    from trackers.eval import compute_clear_metrics, compute_hota_metrics, compute_identity_metrics
    from trackers.io.mot import _prepare_mot_sequence

    seq = _prepare_mot_sequence(_to_mot_data(gt), _to_mot_data(tracks), num_frames=num_frames)
    args = (seq.gt_ids, seq.tracker_ids, seq.similarity_scores)
    return {"CLEAR": compute_clear_metrics(*args, threshold=IOU),
            "HOTA": compute_hota_metrics(*args),
            "Identity": compute_identity_metrics(*args, threshold=IOU)}


def _headline(metrics: dict) -> dict:
    hota = metrics["HOTA"]["HOTA"]
    return {"HOTA": float(np.mean(hota)) if np.ndim(hota) else float(hota),
            "IDF1": float(metrics["Identity"]["IDF1"]), "MOTA": float(metrics["CLEAR"]["MOTA"]),
            "IDSW": int(metrics["CLEAR"]["IDSW"])}


def score_video(video_dir: str | os.PathLike, gt_file: str | os.PathLike) -> tuple[dict, dict, np.ndarray]:
    """Score one finished video folder of a run against its ``gt.txt``.

    Returns (headline figures, raw trackers metric dicts, ground-truth label per manifest row)."""
    video_dir = Path(video_dir)
    info = json.loads((video_dir / "video.json").read_text())
    every, n_read = int(info["options"]["every"]), int(info["frames_read"])
    gt = _processed(read_mot(gt_file), every, n_read)
    tracks = _processed(read_mot(video_dir / "tracks.txt"), every, n_read)
    dets = _processed(read_mot(video_dir / "detections.txt"), every, n_read)
    num = len(range(0, n_read, every))
    metrics = tracking_metrics(gt, tracks, num)
    rows = pd.read_parquet(video_dir / "rows.parquet")
    fr = rows["frame"].to_numpy().astype(np.int64)
    purity, labels = tracklet_purity(fr // every + 1, rows["video_tracklet"].to_numpy(),
                                     rows[["x1", "y1", "x2", "y2"]].to_numpy(), gt)
    head = _headline(metrics) | purity | detection_scores(dets, gt)
    return head, metrics, labels


def score_run(out: str | os.PathLike, gt_dir: str | os.PathLike, write: bool = True,
              summary: str | os.PathLike | None = None) -> dict:
    """Score every ingested video of run ``out`` that has ground truth
    ``gt_dir/<video stem>/gt/gt.txt``; write ``out/scores.json`` and add a ``true_identity``
    column (ground-truth id, -1 for crops of no one) to the run's manifest. ``summary`` is the
    run's summary JSON (default ``out/ingest.json``; a shard's is ``ingest.shard-K-of-N.json``)."""
    from trackers.eval import aggregate_clear_metrics, aggregate_hota_metrics, aggregate_identity_metrics

    from cion.data.manifest import read_manifest, write_manifest

    out, gt_dir = Path(out), Path(gt_dir)
    summary = Path(summary) if summary is not None else out / "ingest.json"
    try:
        run = json.loads(summary.read_text())
    except (OSError, ValueError):
        raise CionError(f"{summary}: missing or unreadable. Fix: run `cion ingest ... --out {out}` "
                        "first") from None
    per_video, raw, labels = {}, [], {}
    for vid in run["per_video"]:
        gt_file = gt_dir / Path(vid).stem / "gt" / "gt.txt"
        if not gt_file.is_file():
            continue
        head, metrics, lab = score_video(out / "videos" / video_key(vid), gt_file)
        per_video[vid], labels[vid] = head, lab
        raw.append(metrics)
    if not per_video:
        raise CionError(f"--gt {gt_dir}: no ground truth for any ingested video (looked for "
                        f"{gt_dir}/<video stem>/gt/gt.txt). Fix: point --gt at the MOTChallenge folder")
    total = _headline({
        "CLEAR": aggregate_clear_metrics([m["CLEAR"] for m in raw]),
        "HOTA": aggregate_hota_metrics([m["HOTA"] for m in raw]),
        "Identity": aggregate_identity_metrics([m["Identity"] for m in raw])})
    crops = sum(v["crops"] for v in per_video.values())
    majority = sum(v["purity"] * v["crops"] for v in per_video.values() if v["crops"])
    n_gt = sum(v["gt_boxes"] for v in per_video.values())
    total |= {
        "purity": majority / crops if crops else None,
        "purity_per_tracklet": (np.mean([v["purity_per_tracklet"] for v in per_video.values()
                                         if v["tracklets"] for _ in range(v["tracklets"])])
                                if crops else None),
        "false_crop_share": (sum(v["false_crop_share"] * v["crops"] for v in per_video.values()
                                 if v["crops"]) / crops if crops else None),
        "detection_recall": (sum(v["detection_recall"] * v["gt_boxes"] for v in per_video.values()
                                 if v["gt_boxes"]) / n_gt if n_gt else None),
        "videos": len(per_video), "crops": crops,
        "tracklets": sum(v["tracklets"] for v in per_video.values())}
    path = summary.with_name(summary.name.replace("ingest", "scores", 1))
    scores = {"gt": str(gt_dir), "path": str(path), "total": total, "per_video": per_video}
    if write:
        atomic_write(path, lambda p: Path(p).write_text(json.dumps(scores, indent=1)))
        manifest_path = Path(run["manifest"])
        df = read_manifest(manifest_path)
        true = np.full(len(df), -1, np.int64)
        for vid, lab in labels.items():
            rows = pd.read_parquet(out / "videos" / video_key(vid) / "rows.parquet")
            key = dict(zip(zip(rows["video_tracklet"], rows["frame"]), lab))
            sel = np.flatnonzero((df["video"] == vid).to_numpy())
            true[sel] = [key.get((t, f), -1) for t, f in
                         zip(df["video_tracklet"].to_numpy()[sel], df["frame"].to_numpy()[sel])]
        df["true_identity"] = true
        write_manifest(df, manifest_path)
    return scores
