"""Why the methods rank as they do: what each backbone makes of pairs of pre-training images.

For pairs of clean person images of the pre-training set (no ID switch, no false detection),
the mean cosine distance between their features, by what the two images share:

* ``augmented view``: two augmented views of one image (instance-level DINO's positives);
* ``same tracklet``: two frames of one tracklet (tracklet-level positives);
* ``same video, other person``: two people filmed in one video (same camera, same scene);
* ``same person, other video``: one person in two videos (what the cross-video level links);
* ``other person, other video``: two people in two videos.

Every positive the benchmark scores is the same person in another camera, and its negatives are
other people, so the **cross-video margin** (other person, other video minus same person, other
video) is what zero-shot retrieval rewards. The same seeded pairs serve every backbone.
"""
from __future__ import annotations

import numpy as np

PAIR_KINDS = ("augmented view", "same tracklet", "same video, other person",
              "same person, other video", "other person, other video")
MARGIN = "cross-video margin"


def sample_pairs(tracklet: np.ndarray, video: np.ndarray, person: np.ndarray, n: int = 400,
                 seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{kind: (i, j)}`` row indices of up to ``n`` pairs for each of :data:`PAIR_KINDS`.

    Args:
        tracklet, video: (N,) labels of the pre-training rows (a tracklet never spans videos).
        person: (N,) true identity, -1 for rows that must not be used (noise).
        n: anchors drawn (without replacement) among the usable rows; each anchor gets one
            partner of each kind where it has one. ``augmented view`` pairs are ``(a, a)``.
    """
    rng = np.random.default_rng(seed)
    ok = np.flatnonzero(person >= 0)
    anchors = np.sort(rng.choice(ok, size=min(n, len(ok)), replace=False))
    t_ok, v_ok, p_ok = tracklet[ok], video[ok], person[ok]        # the usable rows' labels
    rules = {
        "same tracklet": lambda a: (t_ok == tracklet[a]) & (ok != a),
        "same video, other person": lambda a: (v_ok == video[a]) & (p_ok != person[a]),
        "same person, other video": lambda a: (v_ok != video[a]) & (p_ok == person[a]),
        "other person, other video": lambda a: (v_ok != video[a]) & (p_ok != person[a]),
    }
    pairs = {PAIR_KINDS[0]: (anchors, anchors.copy())}
    for kind in PAIR_KINDS[1:]:
        i, j = [], []
        for a in anchors:
            candidates = ok[rules[kind](a)]
            if len(candidates):
                i.append(a)
                j.append(rng.choice(candidates))
        pairs[kind] = (np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64))
    return pairs


def mean_distances(features: np.ndarray, views: np.ndarray,
                   pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Mean cosine distance per kind, and the cross-video margin.

    Args:
        features: (N, D) features of the pre-training rows (only the rows in ``pairs`` are read).
        views: (A, 2, D) features of two augmented views of each ``augmented view`` anchor.
    """
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    f, v = unit(np.asarray(features, np.float64)), unit(np.asarray(views, np.float64))
    out = {PAIR_KINDS[0]: float(np.mean(1.0 - np.einsum("ad,ad->a", v[:, 0], v[:, 1])))}
    for kind in PAIR_KINDS[1:]:
        i, j = pairs[kind]
        out[kind] = float(np.mean(1.0 - np.einsum("ad,ad->a", f[i], f[j]))) if len(i) else float("nan")
    out[MARGIN] = out["other person, other video"] - out["same person, other video"]
    return out


def measure(models, paths: list[str], pairs: dict, size, augment) -> dict[str, dict]:
    """Pair distances of each backbone.

    Args:
        models: iterable of ``(name, seed, backbone)``.
        paths: (N,) image files of the pre-training rows; size: (H, W) of the backbone's input.
        augment: a :class:`~cion.data.transforms.MultiCropAugment` (the pre-training recipe's).

    Returns:
        ``{name: {kind: mean over seeds, ..., "seeds": [{"seed", kind: value, ...}]}}``.
    """
    import torch

    from cion.evaluation.retrieval import embed, image_tensor

    rows = np.unique(np.concatenate([np.concatenate(p) for p in pairs.values()]))
    where = np.full(len(paths), -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    local = {k: (where[i], where[j]) for k, (i, j) in pairs.items()}
    anchors = pairs[PAIR_KINDS[0]][0]
    images = image_tensor([paths[r] for r in rows], size)                         # (R, 3, H, W)
    views = torch.stack([augment(paths[a], seed=int(a))[0] for a in anchors])   # (A, 2, 3, H, W)
    table: dict[str, dict] = {}
    for name, seed, model in models:
        f = embed(model, images).numpy()
        v = embed(model, views.flatten(0, 1)).view(len(anchors), 2, -1).numpy()
        table.setdefault(name, {"seeds": []})["seeds"].append(
            {"seed": seed, **mean_distances(f, v, local)})
    for row in table.values():
        for kind in PAIR_KINDS + (MARGIN,):
            row[kind] = float(np.mean([s[kind] for s in row["seeds"]]))
    return table
