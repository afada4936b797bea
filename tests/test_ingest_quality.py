"""`cion ingest` on synthetic videos with ground truth: tracking quality above thresholds, and the
chain ingest -> extract -> denoise -> pretrain from the command line.

Thresholds (docs/ingest.md): `python benchmarks/ingest_synth_quality.py --seeds 0 1 2 3 4 5`
measured, at these settings (3 videos x 40 frames, 288x384, HOG at upscale 1 + ByteTrack),
minima over the six seeds of HOTA 0.458, IDF1 0.525, purity 0.860, detection recall 0.574 (seed
1, used here: 0.570, 0.767, 0.944, 0.866). Each threshold sits below the minimum over seeds, so a
different OpenCV build's rounding does not trip it, and far above what a broken stage gives: the
tests below also show that shuffling tracklet labels (a tracker that does not track) falls under
the same thresholds.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cion.data.manifest import read_manifest

THRESHOLDS = {"HOTA": 0.40, "IDF1": 0.50, "purity": 0.85, "detection_recall": 0.55}


def _cli(args):
    from cion.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    from cion.data.synth.video import VideoConfig, generate_videos

    root = tmp_path_factory.mktemp("quality")
    generate_videos(root / "synth", VideoConfig(videos=3, frames=40, seed=1))
    assert _cli(["ingest", str(root / "synth" / "videos"), "--out", str(root / "run"),
                 "--camera-from-name", "--gt", str(root / "synth" / "gt")]) == 0
    return root


def test_tracking_quality_on_synthetic_videos(scored_run):
    scores = json.loads((scored_run / "run" / "scores.json").read_text())
    total = scores["total"]
    for key, threshold in THRESHOLDS.items():
        assert total[key] >= threshold, (key, total[key])
    assert total["videos"] == 3 and total["tracklets"] >= 3
    # the manifest got the ground-truth identity of each crop: purity recomputed from it agrees
    df = read_manifest(scored_run / "run" / "manifest.parquet")
    major = df.groupby("tracklet")["true_identity"].agg(lambda s: s.value_counts().iloc[0]).sum()
    assert major / len(df) == pytest.approx(total["purity"])
    # ground-truth ids are the synthetic pool identity + 1, the same person in every video
    plan = json.loads((scored_run / "synth" / "videos.json").read_text())["videos"]
    for video, rows in df.groupby("video"):
        walkers = {w["identity"] + 1 for w in plan[Path(video).stem]["walkers"]}
        assert set(rows["true_identity"]) - {-1} <= walkers


def test_thresholds_catch_a_tracker_that_does_not_track(scored_run, tmp_path):
    """The same detections with tracklet labels shuffled within each video (what a broken
    tracker would give) fall under the purity and IDF1 thresholds."""
    from cion.ingest.score import score_run

    run = tmp_path / "run"
    shutil.copytree(scored_run / "run", run)
    rng = np.random.default_rng(0)
    for folder in (run / "videos").iterdir():
        rows = pd.read_parquet(folder / "rows.parquet")
        rows["video_tracklet"] = rng.permutation(rows["video_tracklet"].to_numpy())
        rows.to_parquet(folder / "rows.parquet", index=False)
        lines = (folder / "tracks.txt").read_text().splitlines()
        ids = rng.permutation([line.split(",")[1] for line in lines])
        (folder / "tracks.txt").write_text("".join(
            ",".join([line.split(",")[0], i] + line.split(",")[2:]) + "\n" for line, i in zip(lines, ids)))
    broken = score_run(run, scored_run / "synth" / "gt", write=False)["total"]
    assert broken["purity"] < THRESHOLDS["purity"] and broken["IDF1"] < THRESHOLDS["IDF1"]
    assert broken["detection_recall"] == pytest.approx(
        json.loads((scored_run / "run" / "scores.json").read_text())["total"]["detection_recall"])


RECIPE = """
arch: test_vit
epochs: 1
batch_size: 8
local_crops: 2
global_size: [32, 16]
local_size: [16, 8]
out_dim: 64
hidden_dim: 32
bottleneck_dim: 16
num_workers: 0
tensorboard: false
device: cpu
"""


def test_chain_ingest_extract_denoise_pretrain(scored_run, tmp_path, one_torch_thread):
    """The manifest `cion ingest` wrote goes through extract, denoise and pretrain as is."""
    from safetensors.numpy import load_file

    manifest = scored_run / "run" / "manifest.parquet"
    assert _cli(["extract", "--data", str(manifest), "--model", "colour-hist",
                 "--out", str(tmp_path / "f.npy")]) == 0
    feats = np.load(tmp_path / "f.npy")
    assert feats.shape[0] == len(read_manifest(manifest))
    assert _cli(["denoise", "--manifest", str(tmp_path / "f.manifest.parquet"), "--features",
                 str(tmp_path / "f.npy"), "--out", str(tmp_path / "d.parquet"), "--calibrate",
                 "0.8", "--false-links", "1.0"]) == 0
    den = read_manifest(tmp_path / "d.parquet")
    assert set(den["status"]) <= {"kept", "reallocated", "discarded"}
    assert (den["identity"] >= 0).sum() > 0 and den["identity"][den["identity"] >= 0].nunique() >= 2
    assert "true_identity" in den.columns           # carried through extract and denoise
    (tmp_path / "tiny.yaml").write_text(RECIPE)
    assert _cli(["pretrain", "--data", str(tmp_path / "d.parquet"), "--config",
                 str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "pt"), "--max-steps", "2",
                 "--no-progress"]) == 0
    steps = [json.loads(x) for x in (tmp_path / "pt" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and all(np.isfinite(s["loss"]) for s in steps)
    assert len(load_file(str(tmp_path / "pt" / "backbone.safetensors"))) > 0


#: OpenCV's sample video (Debian package opencv-doc); CION_VTEST points at an unpacked copy
VTEST = Path(os.environ.get("CION_VTEST", "/usr/share/doc/opencv-doc/examples/data/vtest.avi"))


@pytest.mark.skipif(not VTEST.is_file(), reason="OpenCV's vtest.avi not found (set CION_VTEST, see docs/ingest.md)")
def test_real_video_vtest(tmp_path):
    """A real pedestrian video nobody here made: 50 frames of OpenCV's vtest.avi give tracklets
    of people (its people are 90-160 px tall at 768x576)."""
    import cv2

    clip = tmp_path / "vtest50.avi"
    cap = cv2.VideoCapture(str(VTEST))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (768, 576))
    for _ in range(50):
        ok, frame = cap.read()
        writer.write(frame)
    writer.release()
    assert _cli(["ingest", str(clip), "--out", str(tmp_path / "run")]) == 0
    df = read_manifest(tmp_path / "run" / "manifest.parquet", check_paths=True)
    assert df["tracklet"].nunique() >= 3 and len(df) >= 60
