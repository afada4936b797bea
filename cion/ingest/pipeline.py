"""One video -> its tracklets: decode, detect, track (ByteTrack), crop, and write the video's
results as a unit.

Everything a video produces goes to a hidden ``OUT/videos/.<key>.partial/`` folder that is renamed
to ``OUT/videos/<key>/`` when the video is complete, with ``video.json`` written last: a folder
with ``video.json`` is a finished video, anything else is redone. A crash mid-video therefore
leaves no half video in any manifest, and a rerun redoes only unfinished videos.

``OUT/videos/<key>/`` holds::

    crops/tTTTTT_fFFFFFF.jpg   one JPEG per kept detection (TTTTTT: the video's tracklet number,
                               FFFFFFF: the frame's decode index)
    rows.parquet               the manifest rows of this video (tracklet numbers local to it)
    tracks.txt                 kept tracks in MOTChallenge format (frame 1-based, every tracked frame)
    detections.txt             every detection of the processed frames (MOTChallenge det format)
    video.json                 frames read, detections, tracks kept / dropped and why, seconds
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from cion.errors import CionError
from cion.fileio import atomic_write
from cion.ingest.boxes import clip_boxes, crop_region, drop_reasons, evenly_spaced
from cion.ingest.decode import FrameReader, video_key

_CAMERA = re.compile(r"(?:^|[^a-z0-9])(?:c|cam|camera)[_-]?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class IngestOptions:
    """Options of ``cion ingest`` that change what a video produces (see docs/ingest.md)."""

    detector: str = "hog"          #: 'hog' or 'onnx:WEIGHTS.onnx'
    upscale: float = 1.0           #: frame resize factor before detection
    every: int = 1                 #: process every N-th decoded frame
    min_height: int = 64           #: crops of shorter person boxes are dropped (pixels)
    min_length: int = 4            #: tracks with fewer kept crops are dropped
    min_track_score: float = 0.75  #: tracks whose mean detection score is lower are dropped
    max_per_tracklet: int = 0      #: keep at most this many crops per track, evenly spaced (0: all)
    camera_from_name: bool = False  #: camera id from 'c3' / 'cam3' / 'camera_3' in the video name
    jpeg_quality: int = 95
    track_activation: float = 0.7  #: ByteTrack: score that starts a track
    track_high: float = 0.6        #: ByteTrack: score of the first association stage
    lost_seconds: float = 1.0      #: ByteTrack: how long a lost track may be re-found
    track_iou: float = 0.3         #: ByteTrack: least IoU of a box with a track's prediction

    def check(self) -> None:
        rules = [
            (self.every >= 1, f"--every must be at least 1 (got {self.every})"),
            (self.min_height >= 8, f"--min-height must be at least 8 pixels (got {self.min_height})"),
            (self.min_length >= 1, f"--min-length must be at least 1 (got {self.min_length})"),
            (0 <= self.min_track_score <= 1, f"--min-track-score must be in [0, 1] (got {self.min_track_score})"),
            (self.max_per_tracklet >= 0, f"--max-per-tracklet must be >= 0 (got {self.max_per_tracklet})"),
            (0.1 <= self.upscale <= 8, f"--upscale must be between 0.1 and 8 (got {self.upscale})"),
            (1 <= self.jpeg_quality <= 100, "jpeg_quality must be in 1..100"),
            (0 < self.track_iou < 1, f"--track-iou must be in (0, 1) (got {self.track_iou})"),
        ]
        for ok, message in rules:
            if not ok:
                raise CionError(message)

    def fingerprint(self) -> str:
        """Short hash of the options: a finished video made with other options is redone."""
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def camera_from_name(video_id: str) -> int:
    """Camera number in a video name ('v001_c3.avi', 'cam_2/x.mp4', '0001_c1s1...') or -1."""
    match = _CAMERA.search(Path(video_id).stem) or _CAMERA.search(video_id)
    return int(match.group(1)) if match else -1


def is_done(folder: Path, options: IngestOptions) -> bool:
    """True when ``folder`` holds a finished video made with ``options``."""
    try:
        info = json.loads((folder / "video.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("options_fingerprint") == options.fingerprint() and (folder / "rows.parquet").is_file()


def _mot_lines(frames, ids, boxes, scores) -> str:
    lines = []
    for f, i, (x1, y1, x2, y2), s in zip(frames, ids, boxes, scores):
        lines.append(f"{f + 1},{i},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{s:.4f},-1,-1,-1\n")
    return "".join(lines)


def ingest_video(path: str | os.PathLike, video_id: str, out: str | os.PathLike,
                 options: IngestOptions = IngestOptions(), detector=None,
                 progress: Callable[[int, int], None] | None = None) -> dict:
    """Ingest one video into ``out/videos/<key>/`` (see module docstring); return its summary.

    Args:
        path: the video file. video_id: its name in the manifest's ``video`` column.
        out: the run's output folder.
        detector: a detector callable (made from ``options.detector`` when None).
        progress: called as ``progress(frames_read, frames_announced)`` every 10 seconds.

    Raises:
        VideoError: the file cannot be read (nothing is left in ``out``).
    """
    from trackers import ByteTrackTracker

    from cion.ingest.detect import make_detector

    start = time.perf_counter()
    out = Path(out)
    key = video_key(video_id)
    final = out / "videos" / key
    partial = out / "videos" / f".{key}.partial"
    reader = FrameReader(path, every=options.every)         # probes: bad files fail here
    info = reader.info
    detector = detector or make_detector(options.detector, options.upscale)
    if partial.exists():
        shutil.rmtree(partial)
    (partial / "crops").mkdir(parents=True)

    fps = info.fps / options.every
    tracker = ByteTrackTracker(lost_track_buffer=max(1, round(30 * options.lost_seconds)),
                               frame_rate=fps, track_activation_threshold=options.track_activation,
                               high_conf_det_threshold=options.track_high,
                               minimum_iou_threshold=options.track_iou)
    try:
        trk_rows, counts = _detect_and_track(reader, detector, tracker, partial, options, progress)
    except Exception:       # a failed video leaves nothing behind (a killed one: see is_done)
        shutil.rmtree(partial, ignore_errors=True)
        raise
    n_dets, empty, untracked, frames_processed = counts
    if reader.frames_read == 0:
        shutil.rmtree(partial, ignore_errors=True)
        from cion.ingest.decode import VideoError
        raise VideoError(f"{path}: no frame could be decoded. Fix: re-encode it "
                         "(e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or remove it")

    summary = _finish_video(partial, video_id, key, trk_rows, options, info)
    summary.update({
        "video": video_id, "path": str(path), "width": info.width, "height": info.height,
        "fps": info.fps, "frames_announced": info.frames, "frames_read": reader.frames_read,
        "frames_processed": frames_processed, "truncated": reader.truncated,
        "detections": n_dets + empty, "detections_dropped": {"empty": empty},
        "untracked_detections": untracked,
        "seconds": round(time.perf_counter() - start, 3),
        "options": asdict(options), "options_fingerprint": options.fingerprint(),
    })
    summary["frames_per_second"] = round(frames_processed / max(summary["seconds"], 1e-9), 2)
    if final.exists():
        shutil.rmtree(final)
    atomic_write(partial / "video.json", lambda p: Path(p).write_text(json.dumps(summary, indent=1)))
    os.replace(partial, final)
    return summary


def _detect_and_track(reader, detector, tracker, partial: Path, options: IngestOptions,
                      progress) -> tuple[list, tuple]:
    """The frame loop: detect, track, write the crops of tracked boxes that pass the box rules
    and stream every detection to ``partial/detections.txt``. Returns the track rows
    ``(frame, tracker id, box, score, drop reason, crop file)`` and the counts
    ``(detections, empty, untracked, frames processed)``."""
    import cv2
    import supervision as sv

    info = reader.info
    with open(partial / "detections.txt", "w") as det_file:  # streamed: memory stays flat
        n_dets = 0
        trk_rows: list[tuple] = []        # (frame, tracker id, box, score, reason, crop file)
        untracked = 0
        empty = 0
        last_report = time.perf_counter()
        frames_processed = 0
        for index, frame in reader:
            h, w = frame.shape[:2]
            boxes, scores = detector(frame)
            boxes = clip_boxes(boxes, w, h)
            ok = ((boxes[:, 2] - boxes[:, 0]) >= 2) & ((boxes[:, 3] - boxes[:, 1]) >= 2)
            empty += int((~ok).sum())
            boxes, scores = boxes[ok], np.asarray(scores, np.float32)[ok]
            det_file.write(_mot_lines([index] * len(boxes), [-1] * len(boxes), boxes, scores))
            n_dets += len(boxes)
            result = tracker.update(sv.Detections(xyxy=boxes.astype(np.float32).reshape(-1, 4),
                                                  confidence=scores))
            ids = np.asarray(result.tracker_id if result.tracker_id is not None else [], dtype=np.int64)
            tracked = ids >= 0
            untracked += int((~tracked).sum())
            t_boxes = clip_boxes(result.xyxy[tracked], w, h)
            t_ids = ids[tracked]
            t_scores = (np.asarray(result.confidence, np.float32)[tracked] if len(t_ids)
                        else np.zeros(0, np.float32))
            reasons = drop_reasons(t_boxes, w, h, options.min_height)
            regions = crop_region(t_boxes, w, h)
            for tid, box, score, reason, (x1, y1, x2, y2) in zip(t_ids, t_boxes, t_scores, reasons, regions):
                name = ""
                if not reason:
                    name = f"trk{int(tid)}_f{index:07d}.jpg"
                    if not cv2.imwrite(str(partial / "crops" / name), frame[y1:y2, x1:x2],
                                       [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality]):
                        raise CionError(f"{partial / 'crops' / name}: cannot write the crop (disk "
                                        "full?). Fix: free space under --out and run again")
                trk_rows.append((index, int(tid), tuple(float(v) for v in box), float(score), reason, name))
            frames_processed += 1
            if progress is not None and time.perf_counter() - last_report > 10:
                progress(index + 1, info.frames)
                last_report = time.perf_counter()
    return trk_rows, (n_dets, empty, untracked, frames_processed)


def _finish_video(partial: Path, video_id: str, key: str, trk_rows: list,
                  options: IngestOptions, info) -> dict:
    """Select tracks and crops, rename crops to local tracklet numbers, write rows and tracks."""
    frames = np.asarray([r[0] for r in trk_rows], np.int64)
    tids = np.asarray([r[1] for r in trk_rows], np.int64)
    reasons = np.asarray([r[4] for r in trk_rows], dtype=object)
    crop_reasons = {r: int((reasons == r).sum()) for r in ("tiny", "border")}
    scores = np.asarray([r[3] for r in trk_rows], np.float64)
    kept_tracks, dropped_short, dropped_score = [], 0, 0
    keep_row = np.zeros(len(trk_rows), bool)
    subsampled = 0
    for tid in pd.unique(tids):                  # tracker ids in order of first appearance
        rows = np.flatnonzero((tids == tid) & (reasons == ""))
        if len(rows) < options.min_length:
            dropped_short += 1
            continue
        if scores[tids == tid].mean() < options.min_track_score:
            dropped_score += 1
            continue
        kept_tracks.append(int(tid))
        chosen = rows[evenly_spaced(len(rows), options.max_per_tracklet)] if options.max_per_tracklet else rows
        subsampled += len(rows) - len(chosen)
        keep_row[chosen] = True
    local = {tid: k for k, tid in enumerate(kept_tracks)}
    crops = partial / "crops"
    records = []
    camera = camera_from_name(video_id) if options.camera_from_name else -1
    for i, (frame, tid, box, score, reason, name) in enumerate(trk_rows):
        if not name:
            continue
        if not keep_row[i]:
            (crops / name).unlink()
            continue
        new = f"t{local[tid]:06d}_f{frame:07d}.jpg"
        os.replace(crops / name, crops / new)
        records.append({
            "path": f"videos/{key}/crops/{new}", "video": video_id, "tracklet": local[tid],
            "frame": frame, "camera": camera, "identity": -1,
            "x1": float(box[0]), "y1": float(box[1]), "x2": float(box[2]), "y2": float(box[3]),
            "score": score, "frame_width": info.width, "frame_height": info.height,
            "video_tracklet": local[tid]})
    rows = rows_frame(records)
    atomic_write(partial / "rows.parquet", lambda p: rows.to_parquet(p, index=False))
    in_kept = np.isin(tids, kept_tracks)
    t_ids = np.asarray([local[t] + 1 for t in tids[in_kept]], np.int64)
    t_boxes = [trk_rows[i][2] for i in np.flatnonzero(in_kept)]
    t_scores = [trk_rows[i][3] for i in np.flatnonzero(in_kept)]
    (partial / "tracks.txt").write_text(_mot_lines(frames[in_kept], t_ids, t_boxes, t_scores))
    return {"camera": camera, "tracks_kept": len(kept_tracks),
            "tracks_dropped": {"short": dropped_short, "low_score": dropped_score},
            "crops": len(records),
            "crops_dropped": crop_reasons | {"subsampled": subsampled,
                                             "dropped_track": int((~in_kept & (reasons == "")).sum())}}


#: dtypes of the per-video rows (the manifest columns of cion.data.manifest plus ingestion's own)
ROW_DTYPES = {"path": "string", "video": "string", "tracklet": "int64", "frame": "int32",
              "camera": "int32", "identity": "int64", "x1": "float32", "y1": "float32",
              "x2": "float32", "y2": "float32", "score": "float32", "frame_width": "int32",
              "frame_height": "int32", "video_tracklet": "int64"}


def rows_frame(records: list[dict]) -> pd.DataFrame:
    """Records -> a DataFrame with :data:`ROW_DTYPES` (also when empty)."""
    df = pd.DataFrame.from_records(records, columns=list(ROW_DTYPES))
    return df.astype(ROW_DTYPES)
