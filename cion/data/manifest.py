"""The Parquet manifest: one row per image, the contract between every stage of cion.

Columns (DESIGN.md), all required:

========== ======== ==========================================================================
column     dtype    meaning
========== ======== ==========================================================================
path       string   image file, relative to the manifest's directory unless absolute
video      string   source video (or camera sequence) the crop was cut from
tracklet   int64    tracklet id; unique in the file (one tracklet belongs to one video)
frame      int32    frame index in the video, -1 when unknown
camera     int32    camera id, -1 when unknown
identity   int64    person identity, -1 when unknown or discarded
========== ======== ==========================================================================

Extra columns (``true_identity``, ``noise``, ``status``, ...) are kept untouched.

>>> df = new_manifest(path=["a.jpg"], video=["v0"], tracklet=[0])
>>> write_manifest(df, "out/manifest.parquet")      # atomic
>>> df = read_manifest("out/manifest.parquet", check_paths=True)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cion.errors import CionError
from cion.fileio import atomic_write

#: Required columns and the dtype each is stored with.
COLUMNS: dict[str, str] = {
    "path": "string",
    "video": "string",
    "tracklet": "int64",
    "frame": "int32",
    "camera": "int32",
    "identity": "int64",
}
#: Defaults used by :func:`new_manifest` for columns not given.
DEFAULTS = {"frame": -1, "camera": -1, "identity": -1}


class ManifestError(CionError, ValueError):
    """A manifest is malformed. The message names the file, the column and the fix."""


def _fail(source: str, column: str | None, problem: str, fix: str) -> None:
    where = f"{source}" + (f", column '{column}'" if column else "")
    raise ManifestError(f"{where}: {problem}. Fix: {fix}")


def _coerce_column(df: pd.DataFrame, name: str, kind: str, source: str) -> pd.Series:
    col = df[name]
    if kind == "string":
        if col.isna().any():
            rows = np.flatnonzero(col.isna().to_numpy())[:5].tolist()
            _fail(source, name, f"{int(col.isna().sum())} missing values (rows {rows}...)",
                  "give every row a value")
        if not (pd.api.types.is_string_dtype(col) or pd.api.types.is_object_dtype(col)):
            _fail(source, name, f"dtype {col.dtype} where strings are expected",
                  f"store '{name}' as text, e.g. df['{name}'] = df['{name}'].astype(str)")
        if pd.api.types.is_object_dtype(col):
            bad = ~col.map(lambda v: isinstance(v, str)).to_numpy()
            if bad.any():
                rows = np.flatnonzero(bad)[:5].tolist()
                _fail(source, name, f"non-text values at rows {rows}",
                      f"convert with df['{name}'] = df['{name}'].astype(str)")
        return col.astype("string")
    # integer columns
    if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_integer_dtype(col):
        hint = ""
        if pd.api.types.is_float_dtype(col):
            hint = (f" ({int(col.isna().sum())} missing)" if col.isna().any() else "")
        _fail(source, name, f"dtype {col.dtype}{hint} where {kind} is expected",
              f"store whole numbers, -1 for unknown: df['{name}'] = "
              f"df['{name}'].fillna(-1).astype('{kind}')")
    info = np.iinfo(kind)
    if len(col) and (col.min() < info.min or col.max() > info.max):
        _fail(source, name, f"values outside the {kind} range", f"renumber '{name}'")
    return col.astype(kind)


def validate(df: pd.DataFrame, source: str = "<in-memory manifest>", *,
             check_paths: bool = False, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Check ``df`` against the manifest schema and return it with canonical dtypes.

    Args:
        df: the table to check (not modified).
        source: name used in error messages (the file it came from).
        check_paths: also check that every image file exists (relative paths resolve against
            ``root``, default the current directory).
        root: directory that relative paths are relative to.

    Raises:
        ManifestError: naming ``source``, the column and the fix.
    """
    if not isinstance(df, pd.DataFrame):
        raise ManifestError(f"{source}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        _fail(source, missing[0], f"missing required column(s) {missing}",
              f"add them (defaults: frame/camera/identity = -1); required columns are "
              f"{list(COLUMNS)}")
    out = df.copy()
    for name, kind in COLUMNS.items():
        out[name] = _coerce_column(df, name, kind, source)

    videos_per_tracklet = out.groupby("tracklet", sort=False)["video"].nunique()
    shared = videos_per_tracklet[videos_per_tracklet > 1]
    if len(shared):
        t = int(shared.index[0])
        vids = out.loc[out["tracklet"] == t, "video"].unique()[:3].tolist()
        _fail(source, "tracklet", f"{len(shared)} tracklet id(s) appear in more than one video "
              f"(e.g. tracklet {t} in videos {vids})",
              "number tracklets uniquely across the whole file, e.g. "
              "df['tracklet'] = df.groupby(['video', 'tracklet']).ngroup()")
    if check_paths:
        base = Path(root) if root is not None else Path.cwd()
        absent = [p for p in out["path"].tolist() if not _resolve(base, p).exists()]
        if absent:
            _fail(source, "path", f"{len(absent)} of {len(out)} image files do not exist "
                  f"(e.g. {absent[:3]}, relative to {base})",
                  "fix the paths, or move the manifest next to the images "
                  "(relative paths are relative to the manifest's directory)")
    return out


def _resolve(base: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else base / q


def resolve_paths(df: pd.DataFrame, root: str | os.PathLike | None = None) -> list[str]:
    """Absolute image paths of ``df`` (relative ones joined to ``root``, default ``df.attrs['root']``,
    itself made absolute against the current directory)."""
    base = Path(root if root is not None else df.attrs.get("root", ".")).absolute()
    return [str(_resolve(base, p)) for p in df["path"].tolist()]


def rebase_paths(df: pd.DataFrame, new_root: str | os.PathLike,
                 root: str | os.PathLike | None = None) -> pd.DataFrame:
    """A copy of ``df`` whose relative paths still name the same files from ``new_root``.

    Use it before writing a manifest to another directory than the one it was read from
    (relative paths are relative to the manifest's own directory). Each relative path is
    resolved against ``root`` (default ``df.attrs['root']``, else the current directory) and
    re-expressed relative to ``new_root`` when possible (``../images/a.jpg``), else made
    absolute (e.g. another drive on Windows). Absolute paths are kept. The copy's
    ``attrs['root']`` is ``new_root``, so calling it twice changes nothing.

    Args:
        df: a manifest, (N rows); not modified.
        new_root: the directory the manifest will be written to (need not exist yet).
        root: the directory ``df``'s relative paths are relative to now.
    """
    old = Path(root if root is not None else df.attrs.get("root", ".")).resolve()
    new = Path(new_root).resolve()
    out = df.copy()
    if old != new:
        out["path"] = pd.array([p if os.path.isabs(p) else _relative_or_absolute(old / p, new)
                                for p in df["path"].astype(str).tolist()], dtype="string")
    out.attrs["root"] = str(new)
    return out


def _relative_or_absolute(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:                              # no relative path (another drive)
        return str(path)


def new_manifest(path: Iterable[str], video: Iterable[str], tracklet: Iterable[int],
                 frame: Iterable[int] | None = None, camera: Iterable[int] | None = None,
                 identity: Iterable[int] | None = None, **extra) -> pd.DataFrame:
    """Build a validated manifest from columns; omitted frame/camera/identity are -1."""
    data = {"path": list(path), "video": list(video), "tracklet": np.asarray(list(tracklet))}
    n = len(data["path"])
    for name, values in (("frame", frame), ("camera", camera), ("identity", identity)):
        data[name] = (np.full(n, DEFAULTS[name]) if values is None
                      else np.asarray(list(values)))
    data.update(extra)
    return validate(pd.DataFrame(data))


def read_manifest(path: str | os.PathLike, *, check_paths: bool = False) -> pd.DataFrame:
    """Read and validate a Parquet manifest. ``df.attrs['root']`` is the manifest's directory."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: no such manifest file. Fix: check the path "
                            "(manifests are written by `cion synth`, `cion ingest`, `cion denoise`)")
    try:
        df = pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as err:
        raise ManifestError(f"{path}: not a readable Parquet file ({err}). Fix: write it with "
                            "cion.data.manifest.write_manifest or DataFrame.to_parquet") from None
    root = path.resolve().parent
    df = validate(df, str(path), check_paths=check_paths, root=root)
    df.attrs["root"] = str(root)
    return df


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate ``df`` and write it to ``path`` atomically (temporary file + rename).

    Relative paths are written as they are, so they must be relative to ``path``'s
    directory: a manifest read from elsewhere goes through :func:`rebase_paths` first.
    """
    path = Path(path)
    df = validate(df, str(path))
    df.attrs = {}
    table = pa.Table.from_pandas(df, preserve_index=False)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))
