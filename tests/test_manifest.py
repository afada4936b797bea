"""The Parquet manifest contract: validation messages, dtypes, atomic writes."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from cion.data.manifest import (COLUMNS, ManifestError, new_manifest, read_manifest, rebase_paths,
                                resolve_paths, validate, write_manifest)


def _df(n=4):
    return pd.DataFrame({
        "path": [f"img{i}.jpg" for i in range(n)], "video": ["v0", "v0", "v1", "v1"][:n],
        "tracklet": np.array([0, 0, 1, 2][:n], dtype=np.int32), "frame": [0, 1, 0, 5][:n],
        "camera": [1, 1, 2, 2][:n], "identity": [-1] * n, "extra": ["a", "b", "c", "d"][:n]})


def test_roundtrip_keeps_extra_columns_and_canonical_dtypes(tmp_path):
    path = write_manifest(_df(), tmp_path / "sub" / "m.parquet")
    df = read_manifest(path)
    assert list(df.columns) == list(_df().columns)
    for name, kind in COLUMNS.items():
        assert str(df[name].dtype) == kind
    assert df.attrs["root"] == str((tmp_path / "sub").resolve())
    assert resolve_paths(df)[0] == str((tmp_path / "sub" / "img0.jpg").resolve())
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["m.parquet"]  # no temp files left


def test_missing_column_names_file_column_and_fix():
    with pytest.raises(ManifestError, match=r"m\.parquet, column 'camera'.*Fix: add"):
        validate(_df().drop(columns="camera"), "m.parquet")


def test_wrong_dtype():
    df = _df()
    df["frame"] = [0.5, 1.0, np.nan, 2.0]
    with pytest.raises(ManifestError, match=r"column 'frame': dtype float64 \(1 missing\).*Fix: "):
        validate(df, "x.parquet")
    df = _df()
    df["video"] = [0, 0, 1, 1]
    with pytest.raises(ManifestError, match=r"column 'video'.*astype\(str\)"):
        validate(df)


def test_duplicate_tracklet_across_videos():
    df = _df()
    df.loc[2, "tracklet"] = 0
    with pytest.raises(ManifestError, match=r"column 'tracklet'.*tracklet 0 in videos \['v0', 'v1'\].*ngroup"):
        validate(df, "m.parquet")


def test_check_paths(tmp_path):
    path = write_manifest(_df(), tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match=r"4 of 4 image files do not exist"):
        read_manifest(path, check_paths=True)
    for i in range(4):
        (tmp_path / f"img{i}.jpg").write_bytes(b"")
    assert len(read_manifest(path, check_paths=True)) == 4


def test_invalid_frame_is_refused_before_writing(tmp_path):
    path = write_manifest(_df(), tmp_path / "m.parquet")
    before = path.read_bytes()
    with pytest.raises(ManifestError):
        write_manifest(_df().drop(columns="path"), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.parquet"]


def test_writer_failing_mid_write_leaves_old_file(tmp_path, monkeypatch):
    """The atomic path itself: the Parquet writer dies half-way through a VALID frame."""
    import cion.data.manifest as manifest

    path = write_manifest(_df(), tmp_path / "m.parquet")
    before = path.read_bytes()
    real = manifest.pq.write_table
    seen = []

    def half_then_fail(table, where, **kw):
        seen.append(str(where))
        real(table, where, **kw)
        with open(where, "r+b") as fh:                 # truncated, as a full disk would leave it
            fh.truncate(len(before) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(manifest.pq, "write_table", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        write_manifest(_df().assign(extra="new"), path)
    assert seen and seen[0] != str(path)               # it wrote a temporary file, not the target
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.parquet"]
    assert read_manifest(path)["extra"].tolist() == ["a", "b", "c", "d"]


KILL_MID_WRITE = """
import os, signal, sys
import pandas as pd
import cion.data.manifest as manifest
def half_then_die(table, where, **kw):
    with open(where, "wb") as fh:
        fh.write(b"PAR1" + b"x" * 100)                 # a partial file, then SIGKILL: no clean-up
    os.kill(os.getpid(), signal.SIGKILL)
manifest.pq.write_table = half_then_die
df = pd.read_parquet(sys.argv[1])
manifest.write_manifest(df, sys.argv[1])
"""


def test_kill_mid_write_leaves_old_file(tmp_path):
    import signal
    import subprocess
    import sys

    path = write_manifest(_df(), tmp_path / "m.parquet")
    before = path.read_bytes()
    res = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, str(path)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert path.read_bytes() == before                  # readers still see the complete old file
    assert len(read_manifest(path)) == 4
    leftovers = [p for p in os.listdir(tmp_path) if p != "m.parquet"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".m.")   # the dead writer's temp file


def test_unreadable_and_absent_files(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ManifestError, match="not a readable Parquet file"):
        read_manifest(bad)


def _files(df, root=None):
    """The image files ``df`` names, as canonical absolute paths."""
    return [os.path.realpath(p) for p in resolve_paths(df, root=root)]


def test_rebase_paths_names_the_same_files_from_another_folder(tmp_path):
    (tmp_path / "data" / "img").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "data" / "img" / name).write_bytes(b"x")
    absolute = str(tmp_path / "data" / "img" / "b.jpg")
    write_manifest(new_manifest(path=["img/a.jpg", absolute], video=["v", "v"], tracklet=[0, 1],
                                extra=[7, 8]), tmp_path / "data" / "m.parquet")
    df = read_manifest(tmp_path / "data" / "m.parquet")
    moved = rebase_paths(df, tmp_path / "out" / "sub")     # need not exist yet
    assert moved["path"].tolist() == ["../../data/img/a.jpg", absolute]
    assert df["path"].tolist() == ["img/a.jpg", absolute]   # input untouched
    assert moved["extra"].tolist() == [7, 8]
    assert _files(moved) == _files(df)
    write_manifest(moved, tmp_path / "out" / "sub" / "m.parquet")
    back = read_manifest(tmp_path / "out" / "sub" / "m.parquet", check_paths=True)
    assert _files(back) == _files(df)
    assert rebase_paths(moved, tmp_path / "out" / "sub")["path"].tolist() == moved["path"].tolist()
    # explicit root (a table without attrs) and a relative root / target, against the cwd
    plain = pd.DataFrame(df).copy()
    plain.attrs = {}
    assert rebase_paths(plain, tmp_path, root=tmp_path / "data")["path"].tolist() == \
        ["data/img/a.jpg", absolute]


def test_rebase_paths_falls_back_to_absolute(tmp_path, monkeypatch):
    df = new_manifest(path=["img/a.jpg"], video=["v"], tracklet=[0])

    def no_relative_path(path, start=None):                 # Windows: another drive
        raise ValueError("path is on mount 'D:', start on mount 'C:'")

    monkeypatch.setattr(os.path, "relpath", no_relative_path)
    moved = rebase_paths(df, tmp_path / "out", root=tmp_path / "data")
    assert moved["path"].tolist() == [str(tmp_path / "data" / "img" / "a.jpg")]


def test_resolve_paths_is_absolute_for_a_relative_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    df = new_manifest(path=["a.jpg"], video=["v"], tracklet=[0])
    df.attrs["root"] = "data"
    assert resolve_paths(df) == [str(tmp_path / "data" / "a.jpg")]


def test_new_manifest_defaults():
    df = new_manifest(path=["a.jpg", "b.jpg"], video=["v", "v"], tracklet=[3, 3])
    assert df["identity"].tolist() == [-1, -1] and df["camera"].dtype == "int32"


def test_compat_shim_makes_timm_importable():
    import cion.compat

    first = cion.compat.ensure_torchvision()
    assert isinstance(first, bool) and first is cion.compat.TORCHVISION_SHIMMED
    assert cion.compat.ensure_torchvision() is first              # idempotent
    import timm  # noqa: F401
    from torchvision import transforms  # noqa: F401
