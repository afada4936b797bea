"""Person detectors: boxes ``(N, 4)`` as ``x1, y1, x2, y2`` pixels of the frame and scores ``(N,)``
in [0, 1].

* :class:`HogDetector` (default): OpenCV's built-in HOG + linear SVM people detector (Dalal &
  Triggs, CVPR 2005), no weights to download. Its 64x128 window holds a ~32x96 person with a
  16-pixel margin on every side, so the window is shrunk to that person box. Its score is an SVM
  margin; :func:`margin_to_score` maps it to [0, 1] for the tracker's thresholds. People shorter
  than ~96 px are missed unless the frame is upscaled first (``upscale``).
* :class:`OnnxDetector`: a user-given YOLO-style ONNX model run with onnxruntime (class 0 =
  person, COCO order), nothing downloaded.

>>> detector = make_detector("hog", upscale=1.5)
>>> boxes, scores = detector(frame_bgr)
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cion.errors import CionError

#: Margin of the HOG window around the person, as fractions of the window (16/64 and 16/128).
HOG_MARGIN_X, HOG_MARGIN_Y = 0.25, 0.125


def margin_to_score(margin: np.ndarray, temperature: float = 0.5) -> np.ndarray:
    """SVM margin -> score in (0, 1): ``sigmoid(margin / temperature)``.

    Margin 0 (the SVM's decision boundary) maps to 0.5; with the default temperature a margin of
    0.2 maps to 0.6 and 0.42 to 0.7 (ByteTrack's default high-score and new-track thresholds),
    a margin of 1 to 0.88.
    """
    return 1.0 / (1.0 + np.exp(-np.asarray(margin, dtype=np.float64) / temperature))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first.

    Args:
        boxes: (N, 4) x1 y1 x2 y2. scores: (N,).
    """
    order = np.argsort(-scores, kind="stable")
    boxes = np.asarray(boxes, dtype=np.float64)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


class HogDetector:
    """OpenCV's default HOG people detector.

    Args:
        upscale: resize factor applied to the frame before detection (2.0 finds people down to
            ~48 px tall; < 1 speeds up large frames that show large people).
        min_margin: lowest SVM margin returned (negative keeps weak boxes for ByteTrack's
            second, low-score association).
        stride: window stride in pixels (8 is OpenCV's usual value; 4 is slower, denser).
        scale: pyramid step between detection scales.
    """

    name = "hog"

    def __init__(self, upscale: float = 1.0, min_margin: float = 0.0, stride: int = 8,
                 scale: float = 1.05):
        import cv2

        if not hasattr(cv2, "HOGDescriptor"):
            raise CionError("this OpenCV build has no HOGDescriptor (OpenCV 5 removed it). Fix: "
                            "pip install 'opencv-python-headless==4.14.0.94' "
                            "'opencv-python==4.14.0.94'")
        if not 0.1 <= upscale <= 8:
            raise CionError(f"--upscale must be between 0.1 and 8 (got {upscale})")
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.upscale, self.min_margin = float(upscale), float(min_margin)
        self.stride, self.scale = int(stride), float(scale)

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 BGR -> (boxes (N, 4) float32 frame pixels, scores (N,) float32)."""
        import cv2

        image = frame
        if self.upscale != 1.0:
            interp = cv2.INTER_LINEAR if self.upscale > 1 else cv2.INTER_AREA
            image = cv2.resize(frame, None, fx=self.upscale, fy=self.upscale, interpolation=interp)
        # finalThreshold=0: no OpenCV grouping (it drops the margins); NMS below instead
        rects, margins = self.hog.detectMultiScale(
            image, hitThreshold=self.min_margin, winStride=(self.stride, self.stride),
            padding=(8, 8), scale=self.scale, groupThreshold=0)
        if len(rects) == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        r = np.asarray(rects, dtype=np.float64).reshape(-1, 4) / self.upscale
        x, y, w, h = r.T
        boxes = np.stack([x + HOG_MARGIN_X * w, y + HOG_MARGIN_Y * h,
                          x + (1 - HOG_MARGIN_X) * w, y + (1 - HOG_MARGIN_Y) * h], axis=1)
        scores = margin_to_score(np.asarray(margins, dtype=np.float64).ravel())
        keep = nms(boxes, scores, 0.4)
        return boxes[keep].astype(np.float32), scores[keep].astype(np.float32)


class OnnxDetector:
    """A YOLO-style ONNX detector through onnxruntime (CPU, or CUDA when available).

    Understood outputs (the first output of the model), for an input of (1, 3, S, S) RGB in
    [0, 1] letterboxed with grey 114:

    * ``(1, 4 + C, N)`` (YOLOv8 / v11): rows ``cx, cy, w, h`` then C class scores;
    * ``(1, N, 5 + C)`` (YOLOv5 / v7): ``cx, cy, w, h, objectness`` then C class scores;
    * ``(1, N, 6)`` with ``x1, y1, x2, y2, score, class`` (end-to-end models with NMS inside).

    Only ``person_class`` (0 in COCO order) is kept.
    """

    name = "onnx"

    def __init__(self, weights: str | os.PathLike, min_score: float = 0.1, person_class: int = 0,
                 input_size: int | None = None, device: str | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise CionError("--detector onnx:... needs onnxruntime. Fix: pip install "
                            "'cion-reid[export]' (or onnxruntime==1.31.1)") from None
        weights = Path(weights)
        if not weights.is_file():
            raise CionError(f"--detector onnx:{weights}: no such file. Fix: give the path of a "
                            "YOLO-style .onnx detector")
        providers = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        import cv2

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, cv2.getNumThreads())   # split among --workers
        try:
            self.session = ort.InferenceSession(str(weights), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise CionError(f"--detector onnx:{weights}: onnxruntime cannot load it "
                            f"({str(err).splitlines()[0][:150]}). Fix: export the detector to "
                            "ONNX again (opset >= 12)") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        fixed = shape[2] if len(shape) == 4 and isinstance(shape[2], int) else None
        self.size = int(input_size or fixed or 640)
        self.min_score, self.person_class = float(min_score), int(person_class)

    def _letterbox(self, frame: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        import cv2

        h, w = frame.shape[:2]
        r = min(self.size / h, self.size / w)
        nh, nw = round(h * r), round(w * r)
        top, left = (self.size - nh) // 2, (self.size - nw) // 2
        canvas = np.full((self.size, self.size, 3), 114, np.uint8)
        canvas[top:top + nh, left:left + nw] = cv2.resize(frame, (nw, nh))
        blob = canvas[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        return np.ascontiguousarray(blob), r, left, top

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 BGR -> (boxes (N, 4) float32 frame pixels, scores (N,) float32)."""
        blob, r, left, top = self._letterbox(frame)
        out = np.asarray(self.session.run(None, {self.input_name: blob})[0], dtype=np.float32)
        boxes, scores = parse_yolo_output(out, self.person_class)
        keep = scores >= self.min_score
        boxes, scores = boxes[keep], scores[keep]
        boxes = (boxes - np.array([left, top, left, top], np.float32)) / r
        keep = nms(boxes, scores, 0.5)
        return boxes[keep].astype(np.float32), scores[keep].astype(np.float32)


def parse_yolo_output(out: np.ndarray, person_class: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A YOLO output tensor (see :class:`OnnxDetector`) -> person boxes (N, 4) x1 y1 x2 y2 in
    input pixels and scores (N,)."""
    if out.ndim == 3:
        out = out[0]
    if out.ndim != 2:
        raise CionError(f"ONNX detector output has shape {out.shape}; expected (1, 4+C, N), "
                        "(1, N, 5+C) or (1, N, 6). Fix: export a YOLO-style detector")
    if out.shape[1] == 6 and out.shape[0] != 6:
        keep = out[:, 5].round() == person_class
        return out[keep, :4], out[keep, 4]
    if out.shape[0] < out.shape[1] and out.shape[0] >= 5:   # (4 + C, N): YOLOv8 layout
        out = out.T
        cls_scores = out[:, 4:]
    else:                                                    # (N, 5 + C): YOLOv5 layout
        cls_scores = out[:, 5:] * out[:, 4:5] if out.shape[1] > 5 else out[:, 4:5]
    if person_class >= cls_scores.shape[1]:
        raise CionError(f"ONNX detector has {cls_scores.shape[1]} classes; person class "
                        f"{person_class} is out of range. Fix: use a COCO-trained detector")
    scores = cls_scores[:, person_class]
    if cls_scores.shape[1] > 1:   # keep a box only where person is its best class
        scores = np.where(cls_scores.argmax(1) == person_class, scores, 0.0)
    cx, cy, w, h = out[:, 0], out[:, 1], out[:, 2], out[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return boxes, scores


def make_detector(spec: str, upscale: float = 1.0, device: str | None = None):
    """``'hog'`` or ``'onnx:PATH.onnx'`` -> a detector callable (see module docstring)."""
    if spec == "hog":
        return HogDetector(upscale=upscale)
    if spec.startswith("onnx:"):
        return OnnxDetector(spec[len("onnx:"):], device=device)
    raise CionError(f"--detector {spec!r} is not known. Fix: use 'hog' or 'onnx:WEIGHTS.onnx'")
