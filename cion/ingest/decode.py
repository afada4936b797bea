"""Reading a video: probe it, then decode its frames in order with OpenCV.

The ``frame`` index that every later stage uses is the *decode counter* (0 for the first frame
OpenCV returns, 1 for the next, ...), never a seek position: seeking in compressed video is
approximate, counting decoded frames is exact.

Bad files fail here, before any crop is written, with a one-line :class:`VideoError` that names
the file: a zero-byte file, a file that is not a video (PyAV's probe names the reason where
OpenCV only says "not opened"), a stream without frames. A file whose header promises more
frames than it decodes (a truncated download) is read to its last good frame; the shortfall is
reported by :class:`FrameReader.truncated`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from cion.errors import CionError

#: File name suffixes taken as videos when a folder is given.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                  ".flv", ".ts", ".mts", ".3gp")


class VideoError(CionError):
    """A video cannot be read. The message names the file and what to do."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video (``frames`` is the header's count, 0 if unknown)."""

    width: int
    height: int
    fps: float
    frames: int


def probe(path: str | os.PathLike) -> VideoInfo:
    """Open ``path`` and read its size, frame rate and announced frame count.

    Raises:
        VideoError: the file is missing, empty, not a video or has no video stream.
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such video file. Fix: check the path")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes). Fix: re-download or remove it")
    reason = _probe_with_av(path)
    if reason:
        raise VideoError(f"{path}: not a readable video ({reason}). Fix: re-encode it "
                         "(e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or remove it")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoError(f"{path}: OpenCV cannot open this video. Fix: re-encode it "
                             "(e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or remove it")
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
    finally:
        cap.release()
    if width <= 0 or height <= 0:
        raise VideoError(f"{path}: no video stream with a frame size. Fix: re-encode it or remove it")
    return VideoInfo(width=width, height=height, fps=fps if 0 < fps < 1000 else 25.0, frames=frames)


def _probe_with_av(path: Path) -> str | None:
    """PyAV's reason why ``path`` is not a video, or None (also when PyAV is not installed)."""
    try:
        import av
    except ImportError:  # PyAV only sharpens the message; OpenCV still decides
        return None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return "no video stream"
    except av.error.FFmpegError as err:
        return str(getattr(err, "strerror", None) or err).splitlines()[0]
    except (OSError, ValueError) as err:
        return str(err).splitlines()[0]
    return None


class FrameReader:
    """Iterate over ``(frame_index, BGR frame)`` of a video, in decode order.

    ``every`` > 1 decodes every frame but only returns (retrieves) each ``every``-th, so frame
    indices stay exact. After iteration, ``frames_read`` is the number of frames decoded and
    ``truncated`` tells whether the header promised more.

    >>> reader = FrameReader("clip.mp4", every=2)
    >>> for index, frame in reader:        # frame: (H, W, 3) uint8, BGR
    ...     pass
    """

    def __init__(self, path: str | os.PathLike, every: int = 1):
        self.path = Path(path)
        self.every = max(1, int(every))
        self.info = probe(self.path)
        self.frames_read = 0

    @property
    def truncated(self) -> bool:
        """True when the header announced more frames than could be decoded (5% slack: some
        containers round their count)."""
        return self.info.frames > 0 and self.frames_read < 0.95 * self.info.frames

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        try:
            index = 0
            while True:
                if index % self.every:
                    if not cap.grab():
                        break
                    index += 1
                    continue
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                index += 1
                yield index - 1, frame
            self.frames_read = index
        finally:
            cap.release()


def list_videos(inputs: list[str | os.PathLike]) -> list[tuple[str, Path]]:
    """Expand files and folders into ``(video id, path)`` pairs, sorted by id.

    The id is the file name for a file given directly, and the path relative to the folder for
    files found (recursively) in a folder. Ids must be unique: they name the output.

    Raises:
        CionError: an input does not exist, a folder holds no videos, or two ids (or their
            output folder names, :func:`video_key`) collide.
    """
    found: dict[str, Path] = {}
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            files = sorted(p for p in item.rglob("*")
                           if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            if not files:
                raise CionError(f"{item}: folder holds no videos ({', '.join(VIDEO_SUFFIXES[:5])}"
                                f", ...). Fix: give a folder of videos or the video files")
            pairs = [(p.relative_to(item).as_posix(), p) for p in files]
        elif item.exists():
            pairs = [(item.name, item)]
        else:
            raise CionError(f"{item}: no such file or folder. Fix: check the path")
        for vid, path in pairs:
            if vid in found and found[vid].resolve() != path.resolve():
                raise CionError(f"two videos would share the id '{vid}' ({found[vid]} and {path})."
                                " Fix: rename one, or give their common parent folder")
            found[vid] = path
    keys: dict[str, str] = {}
    for vid in sorted(found):            # ids name output folders through video_key
        other = keys.setdefault(video_key(vid), vid)
        if other != vid:
            raise CionError(f"videos '{other}' and '{vid}' would share the output folder "
                            f"'{video_key(vid)}'. Fix: rename one of them")
    return sorted(found.items())


def video_key(video_id: str) -> str:
    """A file-system-safe name for a video id ('cam1/clip 2.mp4' -> 'cam1__clip_2.mp4')."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in video_id.replace("/", "__"))
    return safe.lstrip(".") or "video"
