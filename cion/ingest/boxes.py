"""Box arithmetic of ingestion, array in / array out. Boxes are ``(N, 4)`` ``x1, y1, x2, y2`` in
frame pixels (x2, y2 exclusive)."""
from __future__ import annotations

import numpy as np

#: Reasons a tracked detection gets no crop (counted in the per-video JSON).
DROP_REASONS = ("empty", "tiny", "border")


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip boxes to the frame ``[0, width] x [0, height]``."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out


def drop_reasons(boxes: np.ndarray, width: int, height: int, min_height: float,
                 border: float = 2.0) -> np.ndarray:
    """Why each (clipped) box gives no crop: '' (keep), 'empty' (under 2 px wide or tall),
    'tiny' (shorter than ``min_height``) or 'border' (touches the frame edge within ``border``
    px: the person is likely cut off). The first reason that applies wins. Returns (N,) str."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    at_edge = ((b[:, 0] <= border) | (b[:, 1] <= border)
               | (b[:, 2] >= width - border) | (b[:, 3] >= height - border))
    reasons = np.full(len(b), "", dtype=object)
    reasons[at_edge] = "border"
    reasons[h < min_height] = "tiny"
    reasons[(w < 2) | (h < 2)] = "empty"
    return reasons


def crop_region(boxes: np.ndarray, width: int, height: int, aspect: float = 0.5) -> np.ndarray:
    """Integer crop rectangles: each person box widened (never narrowed) to ``aspect`` =
    width / height around its centre (0.5: the 1:2 shape of Market-1501 crops), clipped to the
    frame. Returns (N, 4) int64."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cx = (b[:, 0] + b[:, 2]) / 2
    half = np.maximum(b[:, 2] - b[:, 0], aspect * (b[:, 3] - b[:, 1])) / 2
    out = np.stack([np.floor(cx - half), np.floor(b[:, 1]), np.ceil(cx + half), np.ceil(b[:, 3])], 1)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out.astype(np.int64)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a`` (N, 4) with every box of ``b`` (M, 4)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)[:, None]
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)[None]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """Indices of ``min(n, k)`` items spread evenly over ``range(n)`` (first and last included)."""
    if k <= 0 or n <= k:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))
