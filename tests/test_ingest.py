"""`cion ingest`: parts against slow references, the manifest contract, bad inputs, resuming,
shards / merge and worker processes, on tiny synthetic videos."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cion.data.manifest import read_manifest
from cion.ingest.boxes import clip_boxes, crop_region, drop_reasons, evenly_spaced, iou_matrix
from cion.ingest.detect import margin_to_score, nms, parse_yolo_output
from cion.ingest.pipeline import camera_from_name
from cion.ingest.run import parse_shard, shard_videos
from cion.ingest.score import match_boxes, tracklet_purity


def _cli(args):
    from cion.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


# ---------------------------------------------------------------- parts (no video needed)

def _iou_ref(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_iou_and_nms_match_slow_references():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (12, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (12, 2))], 1)
    m = iou_matrix(boxes, boxes[:5])
    ref = np.array([[_iou_ref(a, b) for b in boxes[:5]] for a in boxes])
    np.testing.assert_allclose(m, ref, atol=1e-12)
    scores = rng.uniform(0, 1, 12)
    keep = nms(boxes, scores, 0.3)
    # reference: walk boxes by descending score, keep one unless it overlaps a kept one > 0.3
    kept = []
    for i in np.argsort(-scores):
        if all(_iou_ref(boxes[i], boxes[j]) <= 0.3 for j in kept):
            kept.append(i)
    assert keep.tolist() == kept and len(kept) < 12


def test_margin_to_score_is_monotone_sigmoid():
    s = margin_to_score(np.array([-2.0, 0.0, 0.2, 0.42, 1.0]))
    assert s[1] == 0.5 and np.all(np.diff(s) > 0) and np.all((s > 0) & (s < 1))
    np.testing.assert_allclose(s[2:4], [0.599, 0.7], atol=2e-3)   # ByteTrack's two thresholds


def test_box_rules():
    b = clip_boxes([[-5, 10, 30, 200], [10, 10, 40, 100], [5, 5, 6, 90], [50, 20, 80, 50]], 100, 120)
    assert b[0].tolist() == [0, 10, 30, 120]
    assert drop_reasons(b, 100, 120, min_height=40).tolist() == ["border", "", "empty", "tiny"]
    r = crop_region(np.array([[40, 10, 50, 110]]), 100, 120)       # 10 x 100 box -> 50 wide
    assert r.tolist() == [[20, 10, 70, 110]]
    r = crop_region(np.array([[0, 10, 60, 110]]), 100, 120)        # already wider: unchanged
    assert r.tolist() == [[0, 10, 60, 110]]
    assert evenly_spaced(10, 3).tolist() == [0, 4, 9] and evenly_spaced(3, 5).tolist() == [0, 1, 2]


def test_camera_from_name_and_shards():
    assert camera_from_name("v001_c3.avi") == 3
    assert camera_from_name("cam_12/clip.mp4") == 12
    assert camera_from_name("0001_c1s1_000151.mp4") == 1
    assert camera_from_name("street.mp4") == -1
    assert parse_shard("1/4") == (1, 4)
    assert parse_shard(None, {"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    assert parse_shard(None, {}) == (0, 1)
    from cion.errors import CionError
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(CionError):
            parse_shard(bad)
    videos = list(range(11))
    parts = [shard_videos(videos, k, 3) for k in range(3)]
    assert sorted(itertools.chain(*parts)) == videos and max(map(len, parts)) - min(map(len, parts)) <= 1


def test_match_boxes_is_the_best_one_to_one_matching():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = np.concatenate([p := rng.uniform(0, 30, (4, 2)), p + rng.uniform(8, 20, (4, 2))], 1)
        b = a[rng.permutation(4)[:3]] + rng.normal(0, 3, (3, 4))
        ia, ib = match_boxes(a, b, 0.5)
        iou = iou_matrix(a, b)
        assert np.all(iou[ia, ib] >= 0.5) and len(set(ia)) == len(ia) and len(set(ib)) == len(ib)
        best = max((sum(iou[i, j] for i, j in zip(perm, range(3)) if iou[i, j] >= 0.5), )
                   for perm in itertools.permutations(range(4), 3))[0]
        assert iou[ia, ib].sum() == pytest.approx(best)


def test_tracklet_purity_by_hand():
    gt = pd.DataFrame({"frame": [1, 1, 2, 2, 3], "id": [7, 8, 7, 8, 7],
                       "x1": [0, 50, 0, 50, 0], "y1": 0, "x2": [20, 70, 20, 70, 20], "y2": 60})
    # tracklet 0 follows person 7 for 2 frames then switches to 8; tracklet 1: a false detection
    frames = np.array([1, 2, 2, 3])
    trk = np.array([0, 0, 1, 0])
    boxes = np.array([[0, 0, 20, 60], [50, 0, 70, 60], [200, 0, 220, 60], [1, 0, 21, 60]])
    res, labels = tracklet_purity(frames, trk, boxes, gt)
    assert labels.tolist() == [7, 8, -1, 7]
    assert res["purity"] == pytest.approx(3 / 4)                 # 2 of 3 + 1 of 1
    assert res["purity_per_tracklet"] == pytest.approx((2 / 3 + 1) / 2)
    assert res["false_crop_share"] == pytest.approx(1 / 4)


def test_yolo_output_layouts():
    # YOLOv8: (1, 4 + C, N); person (class 0) wins in box 0, class 1 wins in box 1
    v8 = np.zeros((1, 6, 10), np.float32)
    v8[0, :, 0] = [50, 60, 20, 40, 0.9, 0.1]
    v8[0, :, 1] = [10, 10, 4, 4, 0.3, 0.8]
    boxes, scores = parse_yolo_output(v8)
    assert scores[0] == pytest.approx(0.9) and scores[1] == 0
    np.testing.assert_allclose(boxes[0], [40, 40, 60, 80])
    # YOLOv5: (1, N, 5 + C), score = objectness x class score
    v5 = np.zeros((1, 10, 7), np.float32)
    v5[0, 0] = [50, 60, 20, 40, 0.5, 0.8, 0.1]
    boxes, scores = parse_yolo_output(v5)
    assert scores[0] == pytest.approx(0.4)


def test_onnx_detector_letterbox_round_trip(tmp_path):
    """A constant-output ONNX model: one person box in the 64x64 letterboxed input comes back
    in frame pixels; the non-person box and a weak box are dropped."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    out = np.zeros((1, 6, 10), np.float32)
    out[0, :, 0] = [32, 32, 10, 20, 0.9, 0.0]      # person, centre of the input
    out[0, :, 1] = [10, 10, 4, 4, 0.0, 0.9]        # another class
    out[0, :, 2] = [50, 50, 4, 8, 0.05, 0.0]       # too weak
    const = helper.make_tensor("c", TensorProto.FLOAT, out.shape, out.ravel().tolist())
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["output0"], value=const)], "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(out.shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "det.onnx")
    from cion.ingest.detect import make_detector

    det = make_detector(f"onnx:{tmp_path / 'det.onnx'}")
    frame = np.zeros((64, 128, 3), np.uint8)       # letterboxed: scale 0.5, 16 px bars
    boxes, scores = det(frame)
    assert len(boxes) == 1 and scores[0] == pytest.approx(0.9)
    np.testing.assert_allclose(boxes[0], [(27 - 0) * 2, (22 - 16) * 2, 37 * 2, (42 - 16) * 2])


def test_bad_detector_option(tmp_path, capsys):
    (tmp_path / "clip.avi").write_bytes(b"x")      # the detector fails before any video is read
    assert _cli(["ingest", str(tmp_path), "--out", str(tmp_path / "o"), "--detector",
                 f"onnx:{tmp_path / 'none.onnx'}"]) == 2
    assert "none.onnx" in capsys.readouterr().err
    assert _cli(["ingest", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2


# ---------------------------------------------------------------- on tiny synthetic videos

@pytest.fixture(scope="module")
def tiny_videos(tmp_path_factory):
    from cion.data.synth.video import VideoConfig, generate_videos

    root = tmp_path_factory.mktemp("videos")
    generate_videos(root, VideoConfig(videos=3, frames=24, size=(240, 320), people=6,
                                      walkers=(2, 3), person_height=(0.5, 0.7), seed=3))
    return root


@pytest.fixture(scope="module")
def tiny_run(tiny_videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert _cli(["ingest", str(tiny_videos / "videos"), "--out", str(out), "--camera-from-name",
                 "--min-length", "3"]) == 0
    return out


def test_manifest_contract(tiny_run, tiny_videos):
    df = read_manifest(tiny_run / "manifest.parquet", check_paths=True)
    for col in ("x1", "y1", "x2", "y2", "score", "frame_width", "frame_height"):
        assert col in df.columns
    assert len(df) > 20 and df["tracklet"].nunique() >= 2
    assert (df["identity"] == -1).all()
    assert set(df["camera"]) <= {1, 2, 3} and set(df["video"]) <= {f"v00{i}_c{i + 1}.avi" for i in range(3)}
    assert ((df["x1"] >= 0) & (df["x2"] <= df["frame_width"]) & (df["y2"] <= df["frame_height"])).all()
    assert ((df["score"] > 0) & (df["score"] < 1)).all()
    assert (df.groupby("tracklet").size() >= 3).all()                      # --min-length
    assert (df.groupby("tracklet")["frame"].apply(lambda f: f.is_monotonic_increasing)).all()
    # a crop is the frame's pixels inside the crop rectangle, as decoded (frame = decode counter)
    import cv2
    from cion.ingest.boxes import crop_region
    from cion.ingest.decode import FrameReader
    row = df.iloc[len(df) // 2]
    frame = dict(FrameReader(tiny_videos / "videos" / row["video"]))[int(row["frame"])]
    x1, y1, x2, y2 = crop_region(row[["x1", "y1", "x2", "y2"]].to_numpy(float)[None], 320, 240)[0]
    crop = cv2.imread(str(tiny_run / row["path"]))
    assert crop.shape[:2] == (y2 - y1, x2 - x1)
    assert np.abs(crop.astype(int) - frame[y1:y2, x1:x2].astype(int)).mean() < 4   # JPEG q95
    info = json.loads((tiny_run / "ingest.json").read_text())
    v = info["per_video"][row["video"]]
    assert v["frames_read"] == 24 and not v["truncated"] and v["detections"] >= v["crops"]
    assert info["crops"] == len(df) and (tiny_run / "contact_sheet.png").stat().st_size > 1000


def test_resume_after_a_crash_mid_video(tiny_videos, tiny_run, tmp_path, monkeypatch):
    """A crash in video 2 of 3 leaves video 1 finished and no half video; the rerun redoes only
    videos 2 and 3 and gives the same manifest as an uninterrupted run."""
    from cion.ingest import IngestOptions, ingest
    from cion.ingest import detect

    opts = IngestOptions(min_length=3, camera_from_name=True)
    calls = {"n": 0}
    real = detect.HogDetector.__call__

    def crashing(self, frame):
        calls["n"] += 1
        if calls["n"] == 24 + 10:                      # frame 10 of the second video
            raise KeyboardInterrupt
        return real(self, frame)

    monkeypatch.setattr(detect.HogDetector, "__call__", crashing)
    with pytest.raises(KeyboardInterrupt):
        ingest([tiny_videos / "videos"], tmp_path, opts)
    assert not (tmp_path / "manifest.parquet").exists()
    assert (tmp_path / "videos" / "v000_c1.avi" / "video.json").is_file()
    assert not (tmp_path / "videos" / "v001_c2.avi").exists()
    first_json = (tmp_path / "videos" / "v000_c1.avi" / "video.json").stat().st_mtime_ns
    monkeypatch.setattr(detect.HogDetector, "__call__", real)
    summary = ingest([tiny_videos / "videos"], tmp_path, opts)
    assert summary["per_video"]["v000_c1.avi"].get("resumed") is True
    assert (tmp_path / "videos" / "v000_c1.avi" / "video.json").stat().st_mtime_ns == first_json
    assert not list((tmp_path / "videos").glob(".*partial"))
    a = read_manifest(tmp_path / "manifest.parquet")
    b = read_manifest(tiny_run / "manifest.parquet")
    pd.testing.assert_frame_equal(a.drop(columns="path"), b.drop(columns="path"))
    assert a["path"].tolist() == b["path"].tolist()


def test_shards_merge_to_the_unsharded_manifest(tiny_videos, tiny_run, tmp_path, monkeypatch):
    """Two shards (one chosen by torchrun's RANK / WORLD_SIZE and run by 2 worker processes, one
    by --shard) merged give the single run's manifest, paths rewritten to the merge folder."""
    base = ["ingest", str(tiny_videos / "videos"), "--camera-from-name", "--min-length", "3"]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _cli(base + ["--out", str(tmp_path / "s0"), "--workers", "2"]) == 0
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert (tmp_path / "s0" / "manifest.shard-0-of-2.parquet").is_file()
    assert set(read_manifest(tmp_path / "s0" / "manifest.shard-0-of-2.parquet")["video"]) \
        <= {"v000_c1.avi", "v002_c3.avi"}
    assert _cli(base + ["--out", str(tmp_path / "s1"), "--shard", "1/2"]) == 0
    assert _cli(["ingest", "--merge", str(tmp_path / "s1"), "--out", str(tmp_path / "m")]) == 2
    assert not (tmp_path / "m" / "manifest.parquet").exists()
    assert _cli(["ingest", "--merge", str(tmp_path / "s0"), str(tmp_path / "s1"),
                 "--out", str(tmp_path / "m")]) == 0
    merged = read_manifest(tmp_path / "m" / "manifest.parquet", check_paths=True)
    single = read_manifest(tiny_run / "manifest.parquet")
    pd.testing.assert_frame_equal(merged.drop(columns="path"), single.drop(columns="path"))


def _write_video(path, frames):
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()


def test_bad_inputs(tiny_videos, tmp_path, capsys):
    """Zero-byte file, text renamed .mp4, truncated video, video with no people: one line each,
    the good videos still ingested, exit status 2, nothing half-written."""
    import shutil

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(tiny_videos / "videos" / "v000_c1.avi", src / "good.avi")
    (src / "empty.mp4").write_bytes(b"")
    (src / "notes.mp4").write_text("these are my holiday notes, not a video\n" * 50)
    data = (tiny_videos / "videos" / "v001_c2.avi").read_bytes()
    (src / "truncated.avi").write_bytes(data[: len(data) // 2])
    rng = np.random.default_rng(0)
    wall = np.tile(np.linspace(60, 200, 320, dtype=np.uint8)[None, :, None], (240, 1, 3))
    _write_video(src / "nobody.avi", [np.clip(wall + rng.normal(0, 3, wall.shape), 0, 255)
                                      .astype(np.uint8) for _ in range(12)])
    out = tmp_path / "out"
    assert _cli(["ingest", str(src), "--out", str(out), "--min-length", "3"]) == 2
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("cion: error")]
    assert len(lines) == 2
    assert any("empty.mp4" in l and "empty file" in l for l in lines)
    assert any("notes.mp4" in l and "not a readable video" in l for l in lines)
    assert "truncated.avi" in err and "nobody.avi" in err and "Traceback" not in err
    df = read_manifest(out / "manifest.parquet", check_paths=True)
    assert set(df["video"]) <= {"good.avi", "truncated.avi"} and "good.avi" in set(df["video"])
    info = json.loads((out / "ingest.json").read_text())
    assert info["videos_failed"] == 2 and info["videos_ingested"] == 3
    trunc = info["per_video"]["truncated.avi"]
    assert trunc["truncated"] and 0 < trunc["frames_read"] < trunc["frames_announced"]
    assert info["per_video"]["nobody.avi"]["crops"] == 0
    assert not list((out / "videos").glob(".*")) and not list(out.glob(".*tmp*"))
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["good.avi", "nobody.avi", "truncated.avi"]


def test_unwritable_out(tiny_videos, capsys):
    assert _cli(["ingest", str(tiny_videos / "videos"), "--out", "/proc/nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/proc/nope" in err[0] and "not writable" in err[0]


def test_videos_whose_output_folders_collide_are_refused(tmp_path):
    from cion.errors import CionError
    from cion.ingest.decode import list_videos

    (tmp_path / "a b.mp4").write_bytes(b"x")
    (tmp_path / "a_b.mp4").write_bytes(b"x")
    with pytest.raises(CionError, match="would share the output folder 'a_b.mp4'"):
        list_videos([tmp_path])
