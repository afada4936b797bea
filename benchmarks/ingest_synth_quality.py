"""Tracking quality of `cion ingest` (HOG + ByteTrack) on synthetic videos with ground truth.

For each seed: render synthetic videos (cion.data.synth.video), ingest them, score them against
the MOTChallenge ground truth (HOTA / IDF1 / MOTA from the trackers package, tracklet purity and
detection recall from cion.ingest.score), and print one line per seed plus the minimum and mean.
The tests' thresholds (tests/test_ingest_quality.py) sit below the minimum over seeds printed here
at the tests' settings (--videos 3 --frames 40).

    python benchmarks/ingest_synth_quality.py --seeds 0 1 2 3 4 5 --videos 3 --frames 40
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from cion.data.synth.video import VideoConfig, generate_videos
from cion.ingest import IngestOptions, ingest
from cion.ingest.score import score_run

KEYS = ("HOTA", "IDF1", "MOTA", "purity", "detection_recall", "false_crop_share", "tracklets", "crops")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--upscale", type=float, default=1.0)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--track-iou", type=float, default=0.3)
    args = ap.parse_args()
    rows = []
    print("seed " + " ".join(f"{k:>16}" for k in KEYS))
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            generate_videos(tmp / "synth", VideoConfig(videos=args.videos, frames=args.frames, seed=seed))
            ingest([tmp / "synth" / "videos"], tmp / "run",
                   IngestOptions(upscale=args.upscale, every=args.every,
                                         track_iou=args.track_iou))
            total = score_run(tmp / "run", tmp / "synth" / "gt")["total"]
        rows.append([total[k] for k in KEYS])
        print(f"{seed:>4} " + " ".join(f"{v:>16.3f}" for v in rows[-1]), flush=True)
    arr = np.asarray(rows, dtype=np.float64)
    print(" min " + " ".join(f"{v:>16.3f}" for v in arr.min(0)))
    print("mean " + " ".join(f"{v:>16.3f}" for v in arr.mean(0)))


if __name__ == "__main__":
    main()
