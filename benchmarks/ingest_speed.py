"""Speed of `cion ingest` (decode + HOG + ByteTrack + crops) at 768x576, per worker count.

Prints frames/s over all videos (wall clock, including process start-up of the workers), the
per-video decode+detect+track rate and the CPU milliseconds per frame (less disturbed by other
load than wall time), for each --workers value. Videos: synthetic 768x576
street videos (default) or copies of the first --frames frames of a real video (--video, e.g.
OpenCV's vtest.avi, which is 768x576). Record `uptime` beside the figures: other processes on
the machine slow it.

    python benchmarks/ingest_speed.py --workers 1 2 --videos 4 --frames 40
    python benchmarks/ingest_speed.py --video vtest.avi --workers 1 2 --videos 2 --frames 100
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def _copy_frames(src: Path, dst: Path, frames: int) -> None:
    import cv2

    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    writer = None
    for _ in range(frames):
        ok, frame = cap.read()
        if not ok:
            break
        if writer is None:
            h, w = frame.shape[:2]
            writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
        writer.write(frame)
    cap.release()
    if writer is not None:
        writer.release()


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (worker pools)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--frames", type=int, default=40, help="frames per video")
    ap.add_argument("--video", type=Path, default=None, help="a real video to copy instead")
    ap.add_argument("--upscale", type=float, default=1.0)
    args = ap.parse_args()

    from cion.data.synth.video import VideoConfig, generate_videos
    from cion.ingest import IngestOptions, ingest

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "videos"
        if args.video is None:
            generate_videos(tmp / "synth", VideoConfig(videos=args.videos, frames=args.frames,
                                                       size=(576, 768), walkers=(3, 5)))
            src = tmp / "synth" / "videos"
        else:
            src.mkdir()
            _copy_frames(args.video, src / "copy000.avi", args.frames)
            for k in range(1, args.videos):
                os.link(src / "copy000.avi", src / f"copy{k:03d}.avi")
        print(f"load before: {os.getloadavg()[0]:.2f} (1-min average), cpus: {os.cpu_count()}")
        for workers in args.workers:
            cpu0 = _cpu_seconds()
            t = time.perf_counter()
            s = ingest([src], tmp / f"run{workers}", IngestOptions(upscale=args.upscale),
                       workers=workers)
            wall = time.perf_counter() - t
            cpu = _cpu_seconds() - cpu0
            per_video = [v["frames_per_second"] for v in s["per_video"].values()]
            print(f"workers {workers}: {s['frames_read']} frames of {s['videos']} videos in "
                  f"{wall:.1f}s = {s['frames_read'] / wall:.1f} frames/s overall; per video "
                  f"{min(per_video):.1f}-{max(per_video):.1f} frames/s; {s['tracklets']} tracklets, "
                  f"{s['crops']} crops; CPU {1000 * cpu / s['frames_read']:.0f} ms/frame; "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
