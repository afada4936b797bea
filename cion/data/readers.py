"""ReID dataset readers: each returns manifests (``cion.data.manifest``) with identity and camera.

=====================  ==========================================================================
reader                 layout
=====================  ==========================================================================
``market1501``         ``bounding_box_train/ bounding_box_test/ query/``, names
                       ``0002_c1s1_000451_03.jpg`` (id, camera 1-6, sequence, frame, box);
                       id -1 = junk, 0000 = distractor
``msmt17``             V1: ``train/ test/``, V2: ``mask_train_v2/ mask_test_v2/``, both with
                       ``list_{train,val,query,gallery}.txt`` lines ``0000/0000_000_01_...jpg 0``
                       (camera = third ``_`` field); the version is detected and reported
``cion_json``          CION-AL / SYNTH-PEDES annotation json: a list of records with
                       ``file_path`` and ``id`` (pre-training set, no cameras)
``folder``             ``<root>/<identity>/<image>``; or ``<root>/{train,query,gallery}/<identity>/``
                       for an evaluation set; camera from the name (``c3``, ``cam3``) if present
``table``              a user CSV / Parquet with ``path`` and ``identity`` (optional ``camera``,
                       ``split`` in train/query/gallery); relative paths are relative to the file
=====================  ==========================================================================

Cameras are 0-based in the manifests (Market ``c1`` -> 0, MSMT ``01`` -> 0), -1 when unknown.
Each image is its own tracklet; ``video`` is the camera sequence where the dataset has one.
Every reader fails with a :class:`DatasetLayoutError` that says what was expected where.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cion.data.manifest import validate
from cion.errors import CionError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MARKET_NAME = re.compile(r"^(-1|\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)
MSMT_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_")
#: camera in a free-form file name: ``..._c3_...``, ``cam03``, ``c3s1`` (delimited, not in a word)
CAMERA_IN_NAME = re.compile(r"(?:^|[_\-. ])c(?:am(?:era)?)?[_-]?(\d+)(?=$|[_\-. s])", re.IGNORECASE)


class DatasetLayoutError(CionError, ValueError):
    """A dataset directory or file does not have the expected layout; the message shows it."""


@dataclass
class ReidDataset:
    """Splits of a ReID dataset as manifests (``attrs['root']`` set, paths relative to it)."""
    name: str
    root: Path
    query: pd.DataFrame
    gallery: pd.DataFrame
    train: pd.DataFrame | None = None
    version: str = ""
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One paragraph for the CLI: what was loaded, from where, with counts."""
        def count(df):
            if df is None:
                return "-"
            return f"{len(df)} images / {df.loc[df.identity >= 0, 'identity'].nunique()} ids"
        head = f"{self.name}{' ' + self.version if self.version else ''} from {self.root}"
        lines = [head, f"  train {count(self.train)}, query {count(self.query)}, "
                 f"gallery {count(self.gallery)}"]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def _manifest(root: Path, paths, identity, camera, video=None, frame=None, **extra) -> pd.DataFrame:
    n = len(paths)
    df = pd.DataFrame({
        "path": list(paths),
        "video": list(video) if video is not None else ["" for _ in range(n)],
        "tracklet": np.arange(n, dtype=np.int64),
        "frame": np.asarray(frame if frame is not None else np.full(n, -1), dtype=np.int64),
        "camera": np.asarray(camera, dtype=np.int64),
        "identity": np.asarray(identity, dtype=np.int64),
        **extra,
    })
    df = validate(df, str(root))
    df.attrs["root"] = str(root)
    return df


def _layout_error(root: Path, expected: str, found_note: str = "") -> DatasetLayoutError:
    try:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    except OSError:
        entries = None
    found = ("it does not exist" if not root.exists() else
             "it is not a directory" if entries is None else
             f"it contains {entries[:12]}{' ...' if len(entries) > 12 else ''}" if entries
             else "it is empty")
    msg = f"{root}: {expected}; but {found}"
    if found_note:
        msg += f". {found_note}"
    return DatasetLayoutError(msg)


def _find_child_with(root: Path, names: tuple[str, ...]) -> Path | None:
    """A direct sub-directory of ``root`` holding ``names`` (users often pass the parent)."""
    if not root.is_dir():
        return None
    for child in sorted(root.iterdir()):
        if child.is_dir() and all((child / n).exists() for n in names):
            return child
    return None


# ---------------------------------------------------------------------------------- Market-1501
MARKET_DIRS = ("bounding_box_train", "bounding_box_test", "query")


def _market_dir(root: Path, sub: str, keep_junk: bool) -> pd.DataFrame:
    d = root / sub
    files = sorted(p.name for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    parsed = [MARKET_NAME.match(f) for f in files]
    bad = [f for f, m in zip(files, parsed) if m is None]
    if bad:
        raise DatasetLayoutError(
            f"{d}: {len(bad)} image name(s) do not follow the Market-1501 pattern "
            f"ID_cCAMsSEQ_FRAME_BOX.jpg (e.g. 0002_c1s1_000451_03.jpg), first: {bad[:3]}. "
            "Fix: rename them, or read the folder with --dataset folder")
    rows = [(f"{sub}/{f}", int(m[1]), int(m[2]) - 1, f"c{m[2]}s{m[3]}", int(m[4]))
            for f, m in zip(files, parsed)]
    if not keep_junk:
        rows = [r for r in rows if r[1] != -1]
    if not rows:
        return _manifest(root, [], [], [])
    path, ident, cam, video, frame = zip(*rows)
    return _manifest(root, path, ident, cam, video, frame)


def read_market_folder(folder: str | os.PathLike, keep_junk: bool = False) -> pd.DataFrame:
    """One Market-1501 folder (``query/``, ``bounding_box_test/``, ...) as a manifest, rows in
    file-name order, paths relative to the folder's parent (``attrs['root']``), cameras 0-based.
    Junk (id -1) is dropped unless ``keep_junk``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise _layout_error(folder, "expected a Market-1501 image folder (e.g. query/)",
                            "Fix: point at the benchmark folder that holds query/ and "
                            "bounding_box_test/")
    df = _market_dir(folder.parent, folder.name, keep_junk)
    if len(df) == 0:
        raise _layout_error(folder, "expected Market-1501 images (e.g. 0002_c1s1_000451_03.jpg)")
    return df


def read_market1501(root: str | os.PathLike, keep_junk: bool = False) -> ReidDataset:
    """Market-1501 (or any dataset in its exact layout, e.g. the synthetic world's ``market/``).

    Junk images (id -1) are dropped unless ``keep_junk`` (the evaluator ignores them anyway);
    distractors (id 0) stay in the gallery as negatives. Cameras become 0-based.
    """
    root = Path(root)
    missing = [s for s in MARKET_DIRS if not (root / s).is_dir()]
    if missing:
        child = _find_child_with(root, MARKET_DIRS)
        hint = (f"Did you mean --data {child}?" if child else
                "Fix: point --data at the folder that holds bounding_box_train/, "
                "bounding_box_test/ and query/")
        raise _layout_error(root, f"expected Market-1501 folders {list(MARKET_DIRS)}, "
                                  f"missing {missing}", hint)
    train = _market_dir(root, "bounding_box_train", keep_junk=False)
    gallery = _market_dir(root, "bounding_box_test", keep_junk)
    query = _market_dir(root, "query", keep_junk=False)
    if len(query) == 0 or len(gallery) == 0:
        raise _layout_error(root / ("query" if len(query) == 0 else "bounding_box_test"),
                            "expected Market-1501 images (e.g. 0002_c1s1_000451_03.jpg)")
    ds = ReidDataset("Market-1501", root, query, gallery, train)
    n_junk = sum(1 for p in (root / "bounding_box_test").iterdir() if p.name.startswith("-1_"))
    ds.notes.append(f"gallery: {int((gallery.identity == 0).sum())} distractors (0000) kept, "
                    f"{n_junk} junk (-1) {'kept (ignored by the evaluator)' if keep_junk else 'dropped'}")
    return ds


# -------------------------------------------------------------------------------------- MSMT17
MSMT_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
MSMT_VERSIONS = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}


def _msmt_list(root: Path, list_name: str, image_dir: str) -> pd.DataFrame:
    lines = (root / list_name).read_text().split("\n")
    paths, ids, cams = [], [], []
    for no, line in enumerate(lines, 1):  # parsing text lines one by one is inherent here
        line = line.strip()
        if not line:
            continue
        parts = line.split()
        name = parts[0].rsplit("/", 1)[-1]
        m = MSMT_NAME.match(name)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or m is None:
            raise DatasetLayoutError(
                f"{root / list_name}, line {no}: '{line}' is not 'PID/PID_INDEX_CAM_...jpg LABEL' "
                "(e.g. '0000/0000_000_01_0303morning_0015_0.jpg 0'). Fix: use the list files "
                "shipped with MSMT17")
        paths.append(f"{image_dir}/{parts[0]}")
        ids.append(int(parts[1]))
        cams.append(int(m[3]) - 1)
    return _manifest(root, paths, ids, cams, video=[f"c{c + 1:02d}" for c in cams])


def read_msmt17(root: str | os.PathLike, check_files: bool = True) -> ReidDataset:
    """MSMT17 V1 or V2, detected from the folder names (reported in ``version``).

    Train = ``list_train`` + ``list_val`` (32,621 images, 1,041 ids); query 11,659; gallery 82,161.
    """
    root = Path(root)
    found = [v for v, (tr, te) in MSMT_VERSIONS.items() if (root / tr).is_dir() and (root / te).is_dir()]
    if not found:
        for v, dirs in MSMT_VERSIONS.items():
            child = _find_child_with(root, dirs)
            if child:
                raise _layout_error(root, "expected MSMT17 folders train/ + test/ (V1) or "
                                    "mask_train_v2/ + mask_test_v2/ (V2)",
                                    f"Did you mean --data {child}?")
        raise _layout_error(root, "expected MSMT17 folders train/ + test/ (V1) or "
                            "mask_train_v2/ + mask_test_v2/ (V2) beside "
                            f"{', '.join(MSMT_LISTS)}")
    if len(found) > 1:
        raise DatasetLayoutError(f"{root}: holds both MSMT17 V1 (train/, test/) and V2 "
                                 "(mask_train_v2/, mask_test_v2/); their numbers differ. Fix: "
                                 "keep one of them in this folder")
    version = found[0]
    tr, te = MSMT_VERSIONS[version]
    missing = [n for n in MSMT_LISTS if not (root / n).is_file()]
    if missing:
        raise _layout_error(root, f"expected the MSMT17 list files {list(MSMT_LISTS)} beside "
                            f"{tr}/ and {te}/, missing {missing}")
    train = pd.concat([_msmt_list(root, "list_train.txt", tr), _msmt_list(root, "list_val.txt", tr)],
                      ignore_index=True)
    train["tracklet"] = np.arange(len(train), dtype=np.int64)
    train = validate(train, str(root))
    train.attrs["root"] = str(root)
    query = _msmt_list(root, "list_query.txt", te)
    gallery = _msmt_list(root, "list_gallery.txt", te)
    if check_files:
        for df in (query, gallery):
            p = df["path"].iloc[0] if len(df) else None
            if p is not None and not (root / p).exists():
                raise DatasetLayoutError(f"{root / p}: listed in the MSMT17 lists but missing. "
                                         f"Fix: unpack the {te}/ images into {root / te}")
    ds = ReidDataset("MSMT17", root, query, gallery, train, version=version)
    ds.notes.append(f"loaded MSMT17 {version} ({tr}/, {te}/); "
                    + ("V2 has masked faces, its numbers are not comparable with V1 papers"
                       if version == "V2" else "the original release most papers report"))
    return ds


# ----------------------------------------------------------------------- CION-AL / SYNTH-PEDES
def read_cion_json(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> pd.DataFrame:
    """A CION-AL / SYNTH-PEDES annotation json as one manifest (cameras unknown).

    The json is a list of records with at least ``file_path`` (relative to ``image_root``,
    default the json's directory) and ``id``. ``video`` is the image's parent folder; images of
    one identity in one folder share a tracklet.
    """
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetLayoutError(f"{path}: no such annotation file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetLayoutError(f"{path}: not valid JSON ({err}). Expected a list of records "
                                 "like {\"file_path\": \"...jpg\", \"id\": 7}") from None
    if isinstance(records, dict):
        for key in ("annotations", "data", "images"):
            if isinstance(records.get(key), list):
                records = records[key]
                break
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise DatasetLayoutError(f"{path}: expected a non-empty JSON list of records like "
                                 "{\"file_path\": \"...jpg\", \"id\": 7}")
    bad = [i for i, r in enumerate(records) if "file_path" not in r or "id" not in r]
    if bad:
        raise DatasetLayoutError(f"{path}: record {bad[0]} ({len(bad)} in all) lacks 'file_path' or "
                                 f"'id' (keys: {sorted(records[bad[0]])}); CION-AL / SYNTH-PEDES "
                                 "records carry both")
    df = pd.DataFrame({"file_path": [str(r["file_path"]) for r in records],
                       "id": [r["id"] for r in records]})
    try:
        ident = df["id"].astype(np.int64).to_numpy()
    except (TypeError, ValueError):
        ident = pd.factorize(df["id"].astype(str))[0].astype(np.int64)
    video = [os.path.dirname(p) for p in df["file_path"]]
    root = Path(image_root) if image_root is not None else path.resolve().parent
    out = _manifest(root, df["file_path"], ident, np.full(len(df), -1), video)
    out["tracklet"] = out.groupby(["video", "identity"], sort=False).ngroup().astype(np.int64)
    out = validate(out, str(path))
    out.attrs["root"] = str(root)
    return out


# -------------------------------------------------------------------------------- plain folders
def _camera_from_name(name: str) -> int:
    m = CAMERA_IN_NAME.search(Path(name).stem)
    return int(m[1]) if m else -1


def read_identity_folders(root: str | os.PathLike, prefix: str = "") -> pd.DataFrame:
    """``<root>/<identity>/<image>`` as a manifest; identity = folder name if it is an integer,
    else the folders in sorted order (name kept in ``identity_name``); camera from the file name
    (``c3``, ``cam3``; 0-based only if the dataset's numbering is) or -1."""
    root = Path(root)
    if not root.is_dir():
        raise _layout_error(root, "expected a folder with one sub-folder per identity")
    id_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    stray = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if stray:
        raise _layout_error(root, "expected <identity>/<image> sub-folders, not images directly in it",
                            f"Found {len(stray)} loose image(s), e.g. {stray[:2]}. Fix: move each "
                            "identity's images into a folder named after it")
    names = [p.name for p in id_dirs]
    numeric = all(re.fullmatch(r"-?\d+", n) for n in names)
    paths, ids, cams, id_names = [], [], [], []
    for k, d in enumerate(id_dirs):  # one directory listing per identity
        files = sorted(f.name for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        paths += [f"{prefix}{d.name}/{f}" for f in files]
        ids += [int(d.name) if numeric else k] * len(files)
        cams += [_camera_from_name(f) for f in files]
        id_names += [d.name] * len(files)
    if not paths:
        raise _layout_error(root, f"expected images ({', '.join(IMAGE_SUFFIXES)}) inside "
                            "<identity>/ sub-folders")
    return _manifest(root.parent if prefix else root, paths, ids, cams, identity_name=id_names)


def read_folder_dataset(root: str | os.PathLike) -> ReidDataset:
    """An evaluation set as plain folders: ``<root>/query/<id>/*`` and ``<root>/gallery/<id>/*``
    (``train/`` optional). Without camera ids in the names, a query's gallery images of the same
    identity all count (unknown cameras are never "the same camera")."""
    root = Path(root)
    missing = [s for s in ("query", "gallery") if not (root / s).is_dir()]
    if missing:
        raise _layout_error(root, "expected query/<identity>/<image> and gallery/<identity>/<image> "
                            f"(train/ optional), missing {missing}")
    parts = {s: read_identity_folders(root / s, prefix=f"{s}/") for s in ("query", "gallery", "train")
             if (root / s).is_dir()}
    for df in parts.values():
        df.attrs["root"] = str(root)
    ds = ReidDataset("folder", root, parts["query"], parts["gallery"], parts.get("train"))
    if (parts["query"].camera < 0).any() or (parts["gallery"].camera < 0).any():
        ds.notes.append("some camera ids unknown (no c3 / cam3 in file names): those images are "
                        "never treated as same-camera, so no gallery item is dropped for them")
    return ds


# ----------------------------------------------------------------------------- user CSV/Parquet
def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A user CSV / Parquet with ``path`` and ``identity`` (optional ``camera``, ``split``,
    ``video``, ``frame``, ``tracklet``) as a manifest; relative paths are relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: no such file (expected a .csv or .parquet table)")
    try:
        df = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as err:  # pandas raises many types for unreadable files
        raise DatasetLayoutError(f"{path}: cannot be read as {'Parquet' if path.suffix.lower() in ('.parquet', '.pq') else 'CSV'} ({err})") from None
    missing = [c for c in ("path", "identity") if c not in df.columns]
    if missing:
        raise DatasetLayoutError(f"{path}: missing column(s) {missing}; expected at least 'path' and "
                                 f"'identity' (optional 'camera', 'split'); found {list(df.columns)}")
    n = len(df)
    out = df.copy()
    out["path"] = out["path"].astype(str)
    for col, default in (("camera", -1), ("frame", -1)):
        if col not in out.columns:
            out[col] = default
        out[col] = out[col].fillna(-1).astype(np.int64)
    out["identity"] = out["identity"].fillna(-1)
    try:
        out["identity"] = out["identity"].astype(np.int64)
    except (TypeError, ValueError):
        out["identity_name"] = out["identity"].astype(str)
        out["identity"] = pd.factorize(out["identity_name"])[0].astype(np.int64)
    if "video" not in out.columns:
        out["video"] = ""
    out["video"] = out["video"].astype(str)
    if "tracklet" not in out.columns:
        out["tracklet"] = np.arange(n, dtype=np.int64)
    if "split" in out.columns:
        out["split"] = out["split"].astype(str).str.lower()
        bad = sorted(set(out["split"]) - {"train", "query", "gallery"})
        if bad:
            raise DatasetLayoutError(f"{path}, column 'split': unknown value(s) {bad[:5]}; use "
                                     "train, query or gallery")
    out = validate(out, str(path))
    out.attrs["root"] = str(path.resolve().parent)
    return out


def read_table_dataset(path: str | os.PathLike) -> ReidDataset:
    """A user table with a ``split`` column (train / query / gallery) as an evaluation set."""
    df = read_table(path)
    if "split" not in df.columns:
        raise DatasetLayoutError(f"{path}: evaluation needs a 'split' column with values query and "
                                 "gallery (train optional)")
    parts = {}
    for s in ("query", "gallery", "train"):
        part = df[df["split"] == s].reset_index(drop=True)
        part.attrs["root"] = df.attrs["root"]
        parts[s] = part if len(part) else None
    for s in ("query", "gallery"):
        if parts[s] is None:
            raise DatasetLayoutError(f"{path}: no rows with split == '{s}'")
    return ReidDataset("table", Path(path), parts["query"], parts["gallery"], parts["train"])


DATASETS = {"market1501": read_market1501, "msmt17": read_msmt17, "folder": read_folder_dataset,
            "table": read_table_dataset}


def read_dataset(name: str, root: str | os.PathLike) -> ReidDataset:
    """Dispatch to a reader by name: market1501, msmt17, folder or table."""
    key = name.lower().replace("-", "").replace("_", "")
    key = {"market": "market1501", "msmt": "msmt17", "msmt17v1": "msmt17", "msmt17v2": "msmt17",
           "csv": "table", "parquet": "table"}.get(key, key)
    if key not in DATASETS:
        raise DatasetLayoutError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)}")
    return DATASETS[key](root)
