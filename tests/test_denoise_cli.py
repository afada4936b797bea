"""`cion denoise`: output contract, stats, figure, clear errors with nothing written."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cion.cli import main
from cion.data.manifest import new_manifest, read_manifest, resolve_paths, write_manifest
from cion.denoise import denoise
from cion.denoise.metrics import pairwise_precision_recall


def _run(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def _files(df, root=None):
    """The image files ``df`` names, as canonical absolute paths."""
    return [os.path.realpath(p) for p in resolve_paths(df, root=root)]


@pytest.fixture()
def small(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 8))
    who = np.repeat(rng.integers(0, 5, 12), 5)                 # 12 tracklets of 5 images
    X = centres[who] + 0.1 * rng.normal(size=(60, 8))
    X[::7] = rng.normal(size=(len(X[::7]), 8))                   # outliers
    df = new_manifest(path=[f"i{k}.jpg" for k in range(60)],
                      video=[f"v{k // 20}" for k in range(60)],
                      tracklet=np.arange(60) // 5, extra_col=np.arange(60) * 2)
    man = tmp_path / "in.parquet"
    write_manifest(df, man)
    feats = tmp_path / "f.npy"
    np.save(feats, X.astype(np.float16))
    return man, feats, X, df


def test_output_in_another_folder_still_names_the_images(small, tmp_path):
    """Relative paths are relative to the manifest's folder: denoising into another folder
    must rewrite them, or pretraining on the output cannot read a single image."""
    man, feats, X, df = small
    for p in df["path"]:
        (tmp_path / p).write_bytes(b"x")
    (tmp_path / "abs.jpg").write_bytes(b"x")
    df.loc[0, "path"] = str(tmp_path / "abs.jpg")        # absolute paths stay as they are
    write_manifest(df, man)
    out = tmp_path / "runs" / "deep" / "den.parquet"
    assert _run(["denoise", "--data", str(man), "--features", str(feats), "--out", str(out),
                 "--range", "5"]) == 0
    res = read_manifest(out, check_paths=True)            # raises if any image is missing
    assert _files(res) == _files(read_manifest(man))
    assert res["path"].iloc[0] == str(tmp_path / "abs.jpg")
    assert res["path"].iloc[1] == "../../i1.jpg"          # still relative: the tree can move
    # into the manifest's own folder: paths unchanged
    same = tmp_path / "den.parquet"
    assert _run(["denoise", "--data", str(man), "--features", str(feats), "--out", str(same),
                 "--range", "5"]) == 0
    np.testing.assert_array_equal(read_manifest(same)["path"], read_manifest(man)["path"])


def test_cli_output_contract(small, tmp_path, capsys):
    man, feats, X, df = small
    out = tmp_path / "out" / "den.parquet"
    code = _run(["denoise", "--manifest", str(man), "--features", str(feats), "--out", str(out),
                 "--range", "5"])
    assert code == 0
    res = read_manifest(out)
    assert len(res) == len(df)
    assert list(res.columns) == list(df.columns) + ["status"]
    np.testing.assert_array_equal(res["extra_col"], df["extra_col"])
    # the same images, named from the output's folder
    assert _files(res) == _files(df, root=tmp_path)
    ref = denoise(X.astype(np.float16), df["video"], df["tracklet"], range_half_width=5)
    np.testing.assert_array_equal(res["identity"], ref.identity)
    assert set(res["status"]) <= {"kept", "reallocated", "discarded"}
    assert (res.loc[res["status"] == "discarded", "identity"] == -1).all()
    stats = json.loads((tmp_path / "out" / "den.stats.json").read_text())
    assert [s["level"] for s in stats["levels"]] == ["raw", "tracklet", "video", "cross"]
    for s in stats["levels"]:
        assert {"identities", "images_kept", "images_reallocated", "images_discarded", "n_S",
                "seconds"} <= set(s)
        assert s["images_kept"] + s["images_reallocated"] + s["images_discarded"] == len(df)
    assert stats["levels"][-1]["identities"] == res["identity"].max() + 1
    assert (tmp_path / "out" / "den.png").stat().st_size > 1000
    assert "identities" in capsys.readouterr().out


def test_cli_levels_subset(small, tmp_path):
    man, feats, X, df = small
    out = tmp_path / "o.parquet"
    assert _run(["denoise", "--manifest", str(man), "--features", str(feats), "--out", str(out),
                 "--levels", "tracklet"]) == 0
    res = read_manifest(out)
    assert set(res["status"]) <= {"kept", "discarded"}       # no reallocation without "video"
    stats = json.loads((tmp_path / "o.stats.json").read_text())
    assert [s["level"] for s in stats["levels"]] == ["raw", "tracklet"]


def test_cli_centre_and_link_budget(small, tmp_path, capsys):
    from cion.denoise import calibrate_thresholds

    man, feats, X, df = small
    out = tmp_path / "c.parquet"
    assert _run(["denoise", "--manifest", str(man), "--features", str(feats), "--out", str(out),
                 "--range", "5", "--centre", "video", "--calibrate", "0.8",
                 "--false-links", "0.5"]) == 0
    stats = json.loads((tmp_path / "c.stats.json").read_text())
    cal = calibrate_thresholds(X.astype(np.float16), df["video"], df["tracklet"], quantile=0.8,
                               false_links=0.5, range_half_width=5, centre=df["video"])
    assert stats["calibration"]["sigma_drm"] == pytest.approx(cal["sigma_drm"])
    assert stats["calibration"]["false_links"] == 0.5 and stats["params"]["centred"]
    ref = denoise(X.astype(np.float16), df["video"], df["tracklet"], range_half_width=5,
                  sigma_cst=cal["sigma_cst"], sigma_drm=cal["sigma_drm"], centre=df["video"])
    np.testing.assert_array_equal(read_manifest(out)["identity"], ref.identity)
    # cameras unknown (-1) in this manifest: centring per camera is refused, nothing written
    assert _run(["denoise", "--manifest", str(man), "--features", str(feats), "--out",
                 str(tmp_path / "bad.parquet"), "--centre", "camera"]) == 2
    err = capsys.readouterr().err
    assert "camera -1" in err and "--centre video" in err
    assert _no_outputs(tmp_path)


def _no_outputs(tmp_path):
    return not any(p.name.startswith("bad") for p in tmp_path.iterdir())


@pytest.mark.parametrize("problem", ["nan", "zero", "rows", "level"])
def test_cli_errors_write_nothing(small, tmp_path, capsys, problem):
    man, feats, X, df = small
    args = ["denoise", "--manifest", str(man), "--features", str(feats),
            "--out", str(tmp_path / "bad.parquet")]
    if problem in ("nan", "zero"):
        Y = X.copy()
        Y[11] = np.nan if problem == "nan" else 0.0
        np.save(feats, Y.astype(np.float16))
    elif problem == "rows":
        np.save(feats, X[:-3].astype(np.float16))
    else:
        args += ["--levels", "tracklet,crosss"]
    assert _run(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    expect = {"nan": "NaN", "zero": "all-zero", "rows": "57 rows", "level": "crosss"}[problem]
    assert expect in err
    assert _no_outputs(tmp_path)


def test_synthetic_world_pipeline_beats_raw_tracklets(tiny_world):
    """On the synthetic world, with the colour-histogram extractor and calibrated thresholds, the
    full pipeline gives purer identities than the raw tracklets and finds more true pairs."""
    from cion.data.manifest import resolve_paths
    from cion.denoise import calibrate_thresholds
    from cion.handcrafted import colour_histogram_files

    df = read_manifest(tiny_world / "pretrain" / "manifest.parquet")
    F = colour_histogram_files(resolve_paths(df), size=(64, 32))
    v, t, true = df["video"].to_numpy(), df["tracklet"].to_numpy(), df["true_identity"].to_numpy()
    c = calibrate_thresholds(F, v, t)
    raw = pairwise_precision_recall(denoise(F, v, t, levels=()).identity, true)
    full = pairwise_precision_recall(denoise(F, v, t, sigma_cst=c["sigma_cst"],
                                             sigma_drm=c["sigma_drm"]).identity, true)
    assert full["precision"] > raw["precision"]
    assert full["f1"] > raw["f1"]


def test_pairwise_metrics_known_values():
    pred = np.array([0, 0, 0, 1, 1, -1])
    true = np.array([5, 5, 6, 6, 6, 6])
    m = pairwise_precision_recall(pred, true)
    # predicted pairs: 3 + 1 = 4, true among them: (0,1) and (3,4) = 2; true pairs: 1 + 6 = 7
    assert m["pred_pairs"] == 4 and m["hit_pairs"] == 2 and m["true_pairs"] == 7
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(2 / 7)


def test_calibration_counts_the_neighbours_a_tracklet_really_has():
    """With fewer tracklets than the sliding range holds, each meets T - 1 others, not 2 r_s."""
    from cion.denoise import calibrate_thresholds

    rng = np.random.default_rng(0)
    video = np.repeat(np.arange(5), 12)                 # 5 videos x 4 tracklets x 3 images
    tracklet = np.repeat(np.arange(20), 3)             # tracklet ids are global
    feats = rng.random((60, 8)) + 0.1
    small = calibrate_thresholds(feats, video, tracklet, range_half_width=1000)
    assert small["link_probability"] == pytest.approx(0.1 / 19)
    narrow = calibrate_thresholds(feats, video, tracklet, range_half_width=2)
    assert narrow["link_probability"] == pytest.approx(0.1 / 4)
    assert narrow["sigma_drm"] >= small["sigma_drm"]


def test_tracklet_linking_map_known_values():
    from cion.denoise.metrics import tracklet_linking_map

    # people A and B, each one tracklet in video v0 and one in v1 (two rows per tracklet).
    # A's two tracklets point the same way; B's v1 tracklet sits nearer A than B's v0 tracklet.
    a, b0, b1 = [1.0, 0.0], [0.0, 1.0], [1.0, 0.3]
    X = np.array([a, a, b0, b0, a, a, b1, b1])
    video = np.array(["v0"] * 4 + ["v1"] * 4)
    tracklet = np.array([1, 1, 2, 2, 1, 1, 2, 2])
    true = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    r = tracklet_linking_map(X, video, tracklet, true)
    # A(v0) and A(v1) find each other first (AP 1). B(v0): B(v1) at distance 1 - 0.3/|b1| comes
    # before both A tracklets (distance 1): AP 1. B(v1): both A tracklets (distance 1 - 1/|b1|,
    # the one in its own video is a valid negative, as in Market-1501) come before B(v0): AP 1/3
    assert r["queries"] == 4
    assert r["mAP"] == pytest.approx((1 + 1 + 1 + 1 / 3) / 4)
    assert r["rank1"] == pytest.approx(3 / 4)
