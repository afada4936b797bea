"""Quality of an identity correlation against ground truth: pairwise precision / recall.

Over pairs of images: a *predicted* pair shares a predicted identity (both >= 0); a *true* pair
shares a true identity (both >= 0; -1 = not a person, never part of a true pair). Precision =
true predicted pairs / predicted pairs; recall = true predicted pairs / true pairs (so discarding a
real person's image costs recall, keeping a false detection costs precision). Computed from the
contingency table, O(N log N), no pair is enumerated.

:func:`tracklet_linking_map` asks of an extractor what the cross-video level needs from it: rank
every other tracklet by centroid similarity, is the same person from another video on top?
:func:`same_person_pair_share` says how dense a collection is (see
:mod:`cion.denoise.calibrate`); both read the tracklets' ground truth from :func:`tracklet_truth`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


def _pairs(counts) -> int:
    c = np.asarray(counts, dtype=np.int64)
    return int((c * (c - 1) // 2).sum())


def pairwise_precision_recall(pred, true) -> dict:
    """Pairwise precision, recall and F1 of ``pred`` (N,) against ``true`` (N,) (-1 = none)."""
    pred = np.asarray(pred, dtype=np.int64)
    true = np.asarray(true, dtype=np.int64)
    if pred.shape != true.shape:
        raise ValueError(f"pred {pred.shape} and true {true.shape} differ in shape")
    p_ok = pred >= 0
    pred_pairs = _pairs(np.bincount(pred[p_ok])) if p_ok.any() else 0
    t_ok = true >= 0
    true_pairs = _pairs(np.bincount(true[t_ok])) if t_ok.any() else 0
    both = p_ok & t_ok
    cell = pd.DataFrame({"p": pred[both], "t": true[both]}).value_counts().to_numpy()
    hit = _pairs(cell)
    precision = hit / pred_pairs if pred_pairs else 1.0
    recall = hit / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "pred_pairs": pred_pairs,
            "true_pairs": true_pairs, "hit_pairs": hit}


def tracklet_truth(video, tracklet, true) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-tracklet ground truth: ``(t_of, main, t_video)``.

    ``t_of`` (N,) tracklet index of each row (0..T-1, in order of first appearance), ``main``
    (T,) the tracklet's main true identity (its most frequent ``true``; ties: the smallest;
    -1 when non-person rows dominate), ``t_video`` (T,) its video as an integer code.
    """
    video = pd.factorize(np.asarray(video))[0]
    t_of = pd.DataFrame({"v": video, "t": np.asarray(tracklet)}).groupby(
        ["v", "t"], sort=False).ngroup().to_numpy()
    counts = (pd.DataFrame({"t": t_of, "y": np.asarray(true, dtype=np.int64)})
              .value_counts().reset_index(name="n")
              .sort_values(["t", "n", "y"], ascending=[True, False, True], kind="stable")
              .drop_duplicates("t"))
    main = counts["y"].to_numpy()[np.argsort(counts["t"].to_numpy())]
    t_video = np.zeros(len(main), dtype=np.int64)
    t_video[t_of] = video
    return t_of, main, t_video


def same_person_pair_share(video, tracklet, true) -> float:
    """Share of the pairs of person tracklets from different videos whose main true identity
    is the same (what a calibration that treats every such pair as two people assumes is ~0)."""
    _, main, t_video = tracklet_truth(video, tracklet, true)
    keep = main >= 0
    main, t_video = main[keep], t_video[keep]
    cross = _pairs([len(main)]) - _pairs(np.bincount(t_video))
    key = pd.DataFrame({"y": main, "v": t_video})
    same = _pairs(key.groupby("y").size()) - _pairs(key.groupby(["y", "v"]).size())
    return same / cross if cross else 0.0


def tracklet_linking_map(features, video, tracklet, true, centre=None) -> dict:
    """Cross-video tracklet retrieval with ground truth: mAP and rank-1 of tracklet centroids.

    Each tracklet (main true identity: the mode of its rows) queries all others; tracklets of
    the same person in the same video are left out (Market-1501's junk rule with video as the
    camera), so a hit is the same person found in another video. O(T^2) in the tracklets T: a
    diagnostic for worlds of a few thousand tracklets.

    Args:
        features: (N, D) array; video, tracklet: (N,) as for ``denoise``; true: (N,) true
            identity (-1: not a person); centre: None or (N,) groups, as for ``denoise``.

    Returns:
        ``{"mAP", "rank1", "queries"}`` (queries: tracklets whose person is in another video).
    """
    from cion.denoise.features import prepare_features
    from cion.evaluation import evaluate_rank

    src = prepare_features(features, centre=centre)
    t_of, main, vid = tracklet_truth(video, tracklet, true)
    T = len(main)
    C = np.zeros((T, src.dim))
    for a in range(0, src.n, 65536):               # tracklet sums block by block: (T, D) memory
        b = min(a + 65536, src.n)
        C += sp.csr_matrix((np.ones(b - a), (t_of[a:b], np.arange(b - a))), shape=(T, b - a)) \
            @ src.block(a, b)
    src.release()
    C /= np.linalg.norm(C, axis=1, keepdims=True).clip(min=1e-12)
    person = main >= 0
    dist = 1.0 - C[person] @ C.T
    res = evaluate_rank(dist, main[person], main, vid[person], vid, max_rank=1)
    return {"mAP": float(res["mAP"]), "rank1": float(res["cmc"][0]),
            "queries": int(res["num_valid_queries"])}
