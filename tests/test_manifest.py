"""The Parquet manifest contract: validation messages, dtypes, atomic writes."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from cion.data.manifest import COLUMNS, ManifestError, new_manifest, read_manifest, resolve_paths, validate, write_manifest


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


def test_failed_write_leaves_old_file(tmp_path):
    path = write_manifest(_df(), tmp_path / "m.parquet")
    before = path.read_bytes()
    with pytest.raises(ManifestError):
        write_manifest(_df().drop(columns="path"), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.parquet"]


def test_unreadable_and_absent_files(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ManifestError, match="not a readable Parquet file"):
        read_manifest(bad)


def test_new_manifest_defaults():
    df = new_manifest(path=["a.jpg", "b.jpg"], video=["v", "v"], tracklet=[3, 3])
    assert df["identity"].tolist() == [-1, -1] and df["camera"].dtype == "int32"


def test_compat_shim_makes_timm_importable():
    import cion.compat

    assert cion.compat.ensure_torchvision() in (True, False)  # idempotent
    import timm  # noqa: F401
    from torchvision import transforms  # noqa: F401
