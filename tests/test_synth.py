"""The synthetic pedestrian world: determinism, noise ground truth, Market layout, difficulty."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cion.data.manifest import read_manifest
from cion.data.synth import WorldConfig, generate_world, plan_world
from cion.errors import CionError
from cion.handcrafted import colour_histogram_files

MARKET_NAME = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".jpg", ".parquet"):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _market(root: Path, folder: str):
    files = sorted((root / "market" / folder).glob("*.jpg"))
    parsed = [MARKET_NAME.match(f.name) for f in files]
    assert all(parsed), [f.name for f, m in zip(files, parsed) if not m][:3]
    return files, np.array([int(m.group(1)) for m in parsed]), np.array([int(m.group(2)) for m in parsed])


def _slow_map(dist, qp, qc, gp, gc):
    """Per-query Market protocol, obviously correct (loop)."""
    aps = []
    for i in range(len(qp)):
        order = np.argsort(dist[i], kind="stable")
        valid = ~((gp[order] == qp[i]) & (gc[order] == qc[i])) & (gp[order] != -1)
        match = (gp[order] == qp[i])[valid]
        if match.any():
            hits = np.flatnonzero(match)
            aps.append(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))
    return float(np.mean(aps))


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    cfg = WorldConfig(identities=6, videos=3, cameras=3, bench_identities=4, image_size=(32, 16), seed=3)
    generate_world(tmp_path / "a", cfg, workers=1, progress=False)
    generate_world(tmp_path / "b", cfg, workers=2, progress=False)
    generate_world(tmp_path / "c", WorldConfig(**{**cfg.__dict__, "seed": 4}), progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_outputs_exist_and_manifest_is_valid(tiny_world):
    df = read_manifest(tiny_world / "pretrain" / "manifest.parquet", check_paths=True)
    assert {"true_identity", "noise"} <= set(df.columns)
    assert set(df["noise"]) <= {"none", "switch", "false_detection"}
    assert (df["identity"] == -1).all()  # unknown until denoised
    assert (tiny_world / "contact_sheet.png").stat().st_size > 1000
    info = json.loads((tiny_world / "world.json").read_text())
    assert info["stats"]["pretrain"]["images"] == len(df)
    # rows sorted by video, tracklet, frame; identities re-appear across videos
    assert df["tracklet"].is_monotonic_increasing
    videos_per_id = df[df.noise == "none"].groupby("true_identity")["video"].nunique()
    assert (videos_per_id > 1).mean() > 0.5


def _main_identity(df: pd.DataFrame) -> pd.Series:
    return df.groupby("tracklet")["true_identity"].agg(lambda s: s[s >= 0].mode().min())


def test_noise_ground_truth_counts_exactly(tiny_world):
    df = read_manifest(tiny_world / "pretrain" / "manifest.parquet")
    main = df["tracklet"].map(_main_identity(df))
    switch = (df.true_identity >= 0) & (df.true_identity != main)
    false_det = df.true_identity == -1
    assert (switch == (df.noise == "switch")).all()
    assert (false_det == (df.noise == "false_detection")).all()
    # the main identity holds more than half of every tracklet
    share = (df.true_identity == main).groupby(df.tracklet).mean()
    assert (share > 0.5).all()
    # fragments: tracklets of one (video, main identity) beyond the first
    mains = _main_identity(df)
    video = df.groupby("tracklet")["video"].first()
    fragments = len(mains) - len(pd.DataFrame({"v": video, "i": mains}).drop_duplicates())
    stats = json.loads((tiny_world / "world.json").read_text())["stats"]["pretrain"]
    assert fragments == stats["extra_tracklets_from_fragmentation"] > 0
    assert switch.sum() == stats["switch_rows"] and false_det.sum() == stats["false_detection_rows"]


@pytest.mark.parametrize("rates", [(0.05, 0.05, 0.25), (0.12, 0.02, 0.5), (0.0, 0.1, 0.0)])
def test_noise_rates_match_request(rates):
    switch, fd, frag = rates
    world = plan_world(WorldConfig(identities=120, videos=30, switch_rate=switch,
                                   false_detection_rate=fd, fragment_rate=frag, seed=1))
    noise = np.array(world.pretrain_rows["noise"])
    n = len(noise)
    assert abs((noise == "switch").mean() - switch) <= 0.5 / n + 1e-9
    assert abs((noise == "false_detection").mean() - fd) <= 0.5 / n + 1e-9
    stats = world.stats["pretrain"]
    assert abs(stats["fragmented_appearances"] / stats["appearances"] - frag) <= 0.5 / stats["appearances"] + 1e-9
    assert (stats["extra_tracklets_from_fragmentation"] >= stats["fragmented_appearances"])


def test_tracks_turn_and_change_light_without_changing_anything_else():
    base = dict(identities=40, videos=10, seed=2)
    still = plan_world(WorldConfig(**base, turn_rate=0, light_ramp=0, tint_ramp=0, detail_ramp=0))
    moving = plan_world(WorldConfig(**base, turn_rate=1.0))
    assert still.pretrain_rows == moving.pretrain_rows          # same people, videos, noise
    assert still.bench_shots == moving.bench_shots              # the benchmark is untouched
    rows = pd.DataFrame(still.pretrain_rows)
    person = (rows["noise"] == "none").to_numpy()
    shots_still = [s for s, k in zip(still.pretrain_shots, person) if k]
    shots_moving = [s for s, k in zip(moving.pretrain_shots, person) if k]
    assert all(s.tint == (1.0, 1.0, 1.0) and s.detail == 1.0 for s in shots_still)
    quarter = {frozenset(p) for p in (("front", "left"), ("front", "right"), ("back", "left"),
                                      ("back", "right"))}
    tracks = rows[person].groupby(["video", "tracklet"]).indices
    turned = 0
    for idx in tracks.values():
        views = [shots_moving[i].view for i in idx]
        changes = [(a, b) for a, b in zip(views, views[1:]) if a != b]
        assert len(changes) <= 2 and all(frozenset(c) in quarter for c in changes)
        turned += bool(changes)
        light = np.array([shots_moving[i].brightness for i in idx])
        assert ((light > 0.75 * 0.92 - 1e-9) & (light < 1.25 * 1.08 + 1e-9)).all()
        detail = np.array([shots_moving[i].detail for i in idx])
        assert ((detail >= 0.5) & (detail <= 1.0)).all()
        red_over_blue = np.array([shots_moving[i].tint[0] / shots_moving[i].tint[2] for i in idx])
        assert (np.log(red_over_blue) <= 0.3 + 1e-9).all() and (np.log(red_over_blue) >= -0.3 - 1e-9).all()
        if len(idx) >= 3:   # a linear ramp over the track's frames
            frame = rows[person]["frame"].to_numpy()[idx].astype(float)
            fit = np.polyval(np.polyfit(frame, np.log(red_over_blue), 1), frame)
            assert np.allclose(fit, np.log(red_over_blue), atol=1e-9)
            assert np.allclose(np.polyval(np.polyfit(frame, detail, 1), frame), detail, atol=1e-9)
    assert turned > 0.3 * len(tracks)
    # the ramps are there: with each one off the track would not change (a constant is linear)
    ends = np.array([[shots_moving[idx[0]].detail, shots_moving[idx[-1]].detail,
                      np.log(shots_moving[idx[0]].tint[0] / shots_moving[idx[0]].tint[2]),
                      np.log(shots_moving[idx[-1]].tint[0] / shots_moving[idx[-1]].tint[2]),
                      np.mean([shots_moving[i].brightness for i in idx])]
                     for idx in tracks.values() if len(idx) >= 3])
    detail_change, tint_change = np.abs(ends[:, 1] - ends[:, 0]), np.abs(ends[:, 3] - ends[:, 2])
    assert detail_change.mean() > 0.08 and ends[:, :2].min() < 0.6      # 0.5 / 3 expected, 1 - 0.5
    assert tint_change.mean() > 0.1 and np.abs(ends[:, 2:4]).max() > 0.2  # 0.6 / 3 expected
    # per-shot jitter alone (x 0.92-1.08) moves a track's mean brightness by ~0.01; the ramp
    # between two ends in [0.75, 1.25] spreads it by ~0.1
    assert ends[:, 4].std() > 0.05, ends[:, 4].std()
    still_light = np.array([s.brightness for s in shots_still])
    assert ((still_light >= 0.92 - 1e-9) & (still_light <= 1.08 + 1e-9)).all()


def test_benchmark_is_market_layout(tiny_world):
    qf, qp, qc = _market(tiny_world, "query")
    gf, gp, gc = _market(tiny_world, "bounding_box_test")
    tf, tp, tc = _market(tiny_world, "bounding_box_train")
    assert len(qf) and len(gf) and len(tf)
    assert (0 in gp) and (-1 in gp)                      # distractors and junk, in the gallery only
    assert tp.min() > 0 and qp.min() > 0
    assert not set(tp) & set(gp[gp > 0])                 # train / test identities disjoint
    assert set(qp) <= set(gp)
    for pid, cam in zip(qp, qc):                         # every query has a cross-camera positive
        assert ((gp == pid) & (gc != cam)).any()
    assert len({(p, c) for p, c in zip(qp, qc)}) == len(qp)  # one query per identity and camera


def test_world_is_neither_trivial_nor_noise(tiny_world):
    qf, qp, qc = _market(tiny_world, "query")
    gf, gp, gc = _market(tiny_world, "bounding_box_test")
    q, g = colour_histogram_files(qf), colour_histogram_files(gf)
    dist = 1.0 - q @ g.T
    baseline = _slow_map(dist, qp, qc, gp, gc)
    chance = np.mean([_slow_map(np.random.default_rng(s).random(dist.shape), qp, qc, gp, gc)
                      for s in range(3)])
    oracle = _slow_map((qp[:, None] != gp[None]).astype(float), qp, qc, gp, gc)
    assert oracle == 1.0
    assert baseline > 3 * chance and baseline > 0.12, (baseline, chance)
    assert baseline < 0.7, baseline
    same = (qp[:, None] == gp[None]) & (qc[:, None] != gc[None])
    other = (qp[:, None] != gp[None]) & (gp[None] > 0)
    assert dist[same].mean() < dist[other].mean() - 0.05


def test_config_errors_are_user_errors():
    for bad in (dict(identities=0), dict(cameras=12), dict(switch_rate=0.6), dict(image_size=(8, 4))):
        with pytest.raises(CionError):
            plan_world(WorldConfig(**bad))


def _cion(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cion.cli", *args], capture_output=True, text=True,
                          cwd=cwd)


@pytest.mark.parametrize("args", [
    ["--identities", "0"],
    ["--image-size", "abc"],
    ["--image-size", "4x2"],
    ["--identities", "many"],
])
def test_cli_bad_arguments_one_line_exit_2(tmp_path, args):
    res = _cion("synth", "--out", str(tmp_path / "w"), *args)
    assert res.returncode == 2, res
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_cli_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = _cion("synth", "--out", str(blocker / "w"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--out" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cli_help_lists_the_stages():
    """Each stage is a registered command (not only a word in the help text) and is listed."""
    import typer

    from cion.cli import app

    commands = typer.main.get_command(app).commands
    res = _cion("--help")
    assert res.returncode == 0
    for stage in ("extract", "denoise", "pretrain", "finetune", "evaluate", "zoo", "demo", "synth"):
        assert stage in commands, stage
        assert f"  {stage} " in res.stdout, stage
