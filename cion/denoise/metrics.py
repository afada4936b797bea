"""Quality of an identity correlation against ground truth: pairwise precision / recall.

Over pairs of images: a *predicted* pair shares a predicted identity (both >= 0); a *true* pair
shares a true identity (both >= 0; -1 = not a person, never part of a true pair). Precision =
true predicted pairs / predicted pairs; recall = true predicted pairs / true pairs (so discarding a
real person's image costs recall, keeping a false detection costs precision). Computed from the
contingency table, O(N log N), no pair is enumerated.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


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
