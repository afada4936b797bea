"""Fault suite: hostile inputs and interruptions, per command (see docs/robustness.md).

For each command: a corrupt image, a missing file, an unwritable output, NaN features, a kill
mid-write; every case asserts the exit status, the one-line message and what is on disk.
Commands run in-process through ``cion.cli.main`` where that is enough (fast), in a subprocess
where a real SIGKILL or DataLoader workers are the point.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cion.cli import main
from cion.data.images import (BadImageError, BadImageTally, ReplaceBadImages, TooManyBadImages,
                              read_rgb)

ROOT = Path(__file__).resolve().parents[1]


def _cli(argv, capsys) -> tuple[int, str]:
    """Run ``cion ARGV`` in-process: (exit status, stderr)."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("cion: error:") and "Traceback" not in err
    return lines[0]


def _corrupt(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 20)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _images(folder: Path, n: int, size=(32, 16), seed: int = 0, fmt: str = "png") -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = folder / f"{i:03d}.{fmt}"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


# ---- the shared reader ---------------------------------------------------------------------
@pytest.mark.parametrize("damage,reason", [("corrupt", "cannot identify"), ("truncated", "truncated"),
                                           ("empty", "empty file"), ("missing", "missing file")])
def test_read_rgb_names_every_kind_of_bad_file(tmp_path, damage, reason):
    p = _images(tmp_path, 1, size=(64, 32), fmt="jpg")[0]
    assert read_rgb(p).size == (32, 64)
    {"corrupt": _corrupt, "truncated": _truncate, "empty": lambda q: q.write_bytes(b""),
     "missing": lambda q: q.unlink()}[damage](p)
    with pytest.raises(BadImageError) as err:
        read_rgb(p)
    assert str(p) in str(err.value) and reason in err.value.reason.lower()


def test_tally_shares_one_list_and_stops_past_the_share(tmp_path):
    lst = tmp_path / "bad_images.txt"
    a = BadImageTally(100, lst, what="pretrain")
    b = BadImageTally(100, lst, fresh=False)          # another worker / rank of the same run
    assert a.add("x.jpg", "corrupt") == 1 and b.add("x.jpg", "corrupt") == 1
    assert b.add("y.jpg", "missing file") == 2
    assert a.entries() == {"x.jpg": "corrupt", "y.jpg": "missing file"}
    a.check(1)                                        # 1 of 100 = 1%: tolerated
    with pytest.raises(TooManyBadImages) as err:
        a.check()
    assert "2 of 100 images (2.0%)" in str(err.value) and str(lst) in str(err.value)
    # PyTorch re-raises a worker's exception with its traceback folded in: one line survives
    wrapped = TooManyBadImages("Caught TooManyBadImages in DataLoader worker process 0.\n"
                               "Original Traceback (most recent call last):\n  File ...\n"
                               f"cion.data.images.TooManyBadImages: {err.value}")
    assert str(wrapped) == str(err.value)
    assert BadImageTally(100, lst).count == 0 and not lst.exists()   # a fresh run starts over


def test_replacement_is_same_identity_and_deterministic(tmp_path):
    class Reader:                                     # row 1 and 2 unreadable
        paths = [f"img{i}" for i in range(8)]

        def __getitem__(self, item):
            if item[0] in (1, 2):
                raise BadImageError(self.paths[item[0]], "corrupt")
            return item

    labels = np.array([0, 0, 0, 0, 1, 1, 2, -1])
    tally = BadImageTally(7, tmp_path / "bad.txt", max_share=0.5)
    ds = ReplaceBadImages(Reader(), labels, seed=3, tally=tally)
    got = ds[(1, 99, 0)]
    assert labels[got[0]] == 0 and got[0] not in (1, 2) and got[1:] == (99, 0)
    assert ReplaceBadImages(Reader(), labels, seed=3, tally=tally)[(1, 99, 0)] == got
    assert ds[(4, 5, 1)] == (4, 5, 1)
    assert set(tally.entries()) <= {"img1", "img2"} and "img1" in tally.entries()


# ---- cion pretrain -------------------------------------------------------------------------
PRETRAIN = textwrap.dedent("""
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from cion.pretrain import PretrainConfig, pretrain
    data, out, kill_at, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    cfg = PretrainConfig(arch="test_vit", epochs=1, batch_size=20, local_crops=1,
                         global_size=(32, 16), local_size=(16, 8), curriculum=[[0, 2]],
                         out_dim=64, hidden_dim=32, bottleneck_dim=16, warmup_epochs=0,
                         num_workers=workers, checkpoint_every=2, log_every=1, tensorboard=False,
                         seed=5, device="cpu")
    def killer(rec):
        if rec["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    pretrain(data, cfg, out, progress=False, callbacks=[killer])
""")


def _pretrain(data, out, kill_at=-1, workers=0):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", PRETRAIN, str(data), str(out), str(kill_at),
                           str(workers)], env=env, capture_output=True, text=True, timeout=300)


def _pretrain_here(data, out, workers=0):
    """The same run as PRETRAIN, in this process (no interpreter start-up); returns the log."""
    from cion.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(arch="test_vit", epochs=1, batch_size=20, local_crops=1,
                         global_size=(32, 16), local_size=(16, 8), curriculum=[[0, 2]],
                         out_dim=64, hidden_dim=32, bottleneck_dim=16, warmup_epochs=0,
                         num_workers=workers, checkpoint_every=2, log_every=1, tensorboard=False,
                         seed=5, device="cpu")
    logged = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain(data, cfg, out, progress=False, log=logged.append)
    finally:
        torch.set_num_threads(before)
    return "\n".join(logged)


@pytest.fixture(scope="module")
def hundred(tmp_path_factory):
    """100 images, 20 identities x 5; one of them corrupt."""
    from cion.pretrain.toydata import make_toy_manifest

    root = tmp_path_factory.mktemp("hundred")
    df = make_toy_manifest(root, identities=20, images_per_identity=5, size=(32, 16))
    bad = root / df["path"].iloc[37]
    _corrupt(bad)
    return root / "manifest.parquet", bad


def test_pretrain_one_corrupt_in_100_runs_lists_it_and_resumes_exactly(hundred, tmp_path):
    from cion.pretrain.checkpoint import load_training_state

    data, bad = hundred
    log = _pretrain_here(data, tmp_path / "ref", workers=1)    # through a DataLoader worker
    lines = (tmp_path / "ref" / "bad_images.txt").read_text().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == [str(bad)]
    assert "1 unreadable image(s) were replaced" in log
    run = tmp_path / "run"
    killed = _pretrain(data, run, kill_at=3)                 # SIGKILL; last checkpoint: step 2
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_training_state(run / "checkpoint.pt")["global_step"] == 2
    assert "resuming" in _pretrain_here(data, run)
    a, b = load_training_state(tmp_path / "ref" / "checkpoint.pt"), load_training_state(run / "checkpoint.pt")
    assert a["global_step"] == b["global_step"] == 4          # 100 images, K=2, batch 20
    assert max((a["teacher"][k].double() - b["teacher"][k].double()).abs().max().item()
               for k in a["teacher"]) <= 1e-6
    assert (run / "bad_images.txt").read_text() == (tmp_path / "ref" / "bad_images.txt").read_text()


def test_pretrain_five_percent_corrupt_stops_with_one_line(tmp_path, capsys):
    from cion.pretrain.toydata import make_toy_manifest

    df = make_toy_manifest(tmp_path / "d", identities=10, images_per_identity=4, size=(32, 16))
    for rel in df["path"].iloc[[3, 17]]:                      # 2 of 40 = 5%
        _corrupt(tmp_path / "d" / rel)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("arch: test_vit\nlocal_crops: 1\nout_dim: 64\nhidden_dim: 32\n"
                   "bottleneck_dim: 16\ncurriculum: [[0, 2]]\ntensorboard: false\nwarmup_epochs: 0\n")
    out = tmp_path / "run"
    code, err = _cli(["pretrain", "--data", tmp_path / "d" / "manifest.parquet", "--config", cfg,
                      "--out", out, "--epochs", 1, "--batch-size", 8, "--global-size", "32x16",
                      "--local-size", "16x8", "--workers", 0, "--device", "cpu",
                      "--no-progress"], capsys)
    line = _one_line(err)
    # it stops at the first bad image past the share (1 of 40 is already 2.5% > 1%)
    assert code == 2 and re.search(r"pretrain stopped: [12] of 40 images \([25]\.[05]%\)", line)
    assert "allowed 1%" in line and str(out / "bad_images.txt") in line
    listed = (out / "bad_images.txt").read_text().splitlines()
    assert 1 <= len(listed) <= 2 and all(ln.split("\t")[0].endswith(".png") for ln in listed)
    code, err = _cli(["pretrain", "--data", tmp_path / "d" / "manifest.parquet", "--config", cfg,
                      "--out", "/proc/nope", "--device", "cpu"], capsys)
    assert code == 2 and "--out /proc/nope is not writable" in _one_line(err)


# ---- cion extract --------------------------------------------------------------------------
def test_extract_skips_lists_and_stops_past_the_share(tmp_path, capsys):
    imgs = _images(tmp_path / "imgs", 120)
    _corrupt(imgs[7])
    out = tmp_path / "f.npy"
    code, err = _cli(["extract", "--data", tmp_path / "imgs", "--model", "colour-hist",
                      "--out", out], capsys)
    assert code == 0, err
    feats, man = np.load(out), pd.read_parquet(tmp_path / "f.manifest.parquet")
    assert feats.shape[0] == len(man) == 119 and str(imgs[7]) not in set(man["path"])
    assert np.isfinite(feats.astype(np.float32)).all() and (np.abs(feats).sum(1) > 0).all()
    assert (tmp_path / "f.bad_images.txt").read_text().startswith(f"{imgs[7]}\t")
    assert json.loads((tmp_path / "f.json").read_text())["rows"] == 119
    before = out.read_bytes()
    for p in imgs[:2]:                                         # 3 of 120 bad (1 missing)
        _corrupt(p)
    imgs[2].unlink()
    code, err = _cli(["extract", "--data", tmp_path / "imgs", "--model", "colour-hist",
                      "--out", out], capsys)
    line = _one_line(err)
    assert code == 2 and "more than the allowed 1%" in line and "f.bad_images.txt" in line
    assert out.read_bytes() == before                          # previous output intact
    assert not (tmp_path / ".f.partial.npy").exists()
    code, err = _cli(["extract", "--data", tmp_path / "imgs", "--model", "colour-hist",
                      "--out", "/proc/nope/f.npy"], capsys)
    assert code == 2 and "not writable" in _one_line(err)


def test_extract_network_path_skips_bad_images_and_refuses_nan_features(tmp_path):
    from cion.data.images import BadImageTally
    from cion.extract import FeatureModel, extract_features

    imgs = [str(p) for p in _images(tmp_path / "imgs", 6)]
    Path(imgs[2]).write_bytes(b"")
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 4))
    model = FeatureModel("tiny", net, (32, 16), 4)
    tally = BadImageTally(6, None, max_share=0.5)
    f = extract_features(imgs, model, bad_images=tally, progress=False, device="cpu", workers=1,
                         batch_size=4, dtype="float32")
    assert tally.rows == {2: "empty file"} and (f[2] == 0).all() and np.isfinite(f).all()
    with pytest.raises(BadImageError):                         # strict by default
        extract_features(imgs, model, progress=False, device="cpu")
    with torch.no_grad():
        net[2].weight.fill_(float("nan"))
    with pytest.raises(Exception) as err:
        extract_features(imgs[:2], model, progress=False, device="cpu")
    assert "NaN" in str(err.value) and imgs[0] in str(err.value)


EXTRACT_KILL = textwrap.dedent("""
    import os, signal, sys
    import cion.extract as ex
    real = ex._colour_hist_batch
    calls = []
    def dying(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    ex._colour_hist_batch = dying
    ex.extract_to_files(sys.argv[1], "colour-hist", sys.argv[2], batch_size=8, progress=False)
""")


def test_extract_killed_mid_write_leaves_previous_output(tmp_path, capsys):
    _images(tmp_path / "imgs", 600)
    out = tmp_path / "f.npy"
    code, err = _cli(["extract", "--data", tmp_path / "imgs", "--model", "colour-hist",
                      "--out", out], capsys)
    assert code == 0, err
    before = {p: (tmp_path / p).read_bytes() for p in ("f.npy", "f.manifest.parquet", "f.json")}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", EXTRACT_KILL, str(tmp_path / "imgs"), str(out)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert {p: (tmp_path / p).read_bytes() for p in before} == before


# ---- cion evaluate -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """A small Market-1501 layout: 6 identities x 2 cameras, 4 images each."""
    from PIL import Image

    root = tmp_path_factory.mktemp("market")
    rng = np.random.default_rng(1)
    for d in ("bounding_box_train", "bounding_box_test", "query"):
        (root / d).mkdir()
    for pid in range(1, 7):
        colour = rng.integers(0, 255, 3)
        for cam in (1, 2):
            for k in range(2):
                img = np.clip(colour + rng.normal(0, 20, (64, 32, 3)), 0, 255).astype(np.uint8)
                folder = "query" if (cam == 1 and k == 0) else "bounding_box_test"
                Image.fromarray(img).save(root / folder / f"{pid:04d}_c{cam}s1_{k:06d}_00.jpg")
        Image.fromarray(img).save(root / "bounding_box_train" / f"{pid + 10:04d}_c1s1_000000_00.jpg")
    return root


def test_evaluate_names_bad_files_and_stops_unless_skipped(market, tmp_path, capsys):
    root = tmp_path / "m"
    shutil.copytree(market, root)
    bad = sorted((root / "query").iterdir())[2]
    _truncate(bad)
    args = ["evaluate", "--model", "colour-hist", "--dataset", "market1501", "--root", root,
            "--no-figures", "--out"]
    code, err = _cli(args + [tmp_path / "e1"], capsys)
    line = _one_line(err)
    assert code == 2 and str(bad) in line and "--skip-bad-images" in line
    assert (tmp_path / "e1" / "bad_images.txt").read_text().startswith(f"{bad}\t")
    assert not (tmp_path / "e1" / "metrics.json").exists()
    code, err = _cli(args + [tmp_path / "e2", "--skip-bad-images"], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert m["bad_images_skipped"] == 1 and m["plain"]["num_queries"] == 5
    assert str(bad.name) not in " ".join(m["per_query"]["query_path"])
    code, err = _cli(args + ["/proc/nope"], capsys)
    assert code == 2 and "--out /proc/nope is not writable" in _one_line(err)


# ---- cion denoise --------------------------------------------------------------------------
def test_denoise_unwritable_out_kill_mid_write_and_nan_features(tmp_path, capsys):
    from cion.data.manifest import new_manifest, write_manifest

    rng = np.random.default_rng(0)
    n = 40
    write_manifest(new_manifest(path=[f"{i}.jpg" for i in range(n)], video=["v0"] * 20 + ["v1"] * 20,
                                tracklet=np.arange(n) // 4), tmp_path / "m.parquet")
    feats = rng.standard_normal((n, 8)).astype(np.float32)
    np.save(tmp_path / "f.npy", feats)
    out = tmp_path / "o" / "d.parquet"
    base = ["denoise", "--manifest", tmp_path / "m.parquet", "--features", tmp_path / "f.npy"]
    assert _cli(base + ["--out", out], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    code, err = _cli(base + ["--out", "/proc/nope/d.parquet"], capsys)
    assert code == 2 and "not writable" in _one_line(err)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", DENOISE_KILL, str(tmp_path / "m.parquet"),
                        str(tmp_path / "f.npy"), str(out)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert {p.name: p.read_bytes() for p in out.parent.iterdir() if not p.name.startswith(".")} \
        == before                                             # killed while writing: all intact
    feats[5, 3] = np.nan
    np.save(tmp_path / "f.npy", feats)
    code, err = _cli(base + ["--out", out], capsys)
    assert code == 2 and "NaN" in _one_line(err) and "[5]" in err
    assert {p.name: p.read_bytes() for p in out.parent.iterdir() if not p.name.startswith(".")} \
        == before


DENOISE_KILL = textwrap.dedent("""
    import os, signal, sys
    import cion.denoise.io as io
    def dying_plot(stats, path, **kw):          # half a figure, then the power goes
        open(path, "wb").write(b"\\x89PNG half")
        os.kill(os.getpid(), signal.SIGKILL)
    io.plot_levels = dying_plot
    import cion.denoise.figure
    cion.denoise.figure.plot_levels = dying_plot
    io.denoise_manifest(sys.argv[1], sys.argv[2], sys.argv[3], progress=False)
""")
