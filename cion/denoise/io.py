"""``cion denoise``: manifest + features in, identity manifest + stats + figure out.

Everything is checked and computed before anything is written; the outputs are written
atomically (temporary file + rename), so a failed run leaves no partial files.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path


from cion.errors import CionError
from cion.fileio import atomic_write, ensure_writable_file


def output_paths(out: str | os.PathLike) -> tuple[Path, Path, Path]:
    """``OUT.parquet`` -> (OUT.parquet, OUT.stats.json, OUT.png)."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".parquet" else out
    return out, stem.with_name(stem.name + ".stats.json"), stem.with_name(stem.name + ".png")


def _write_json_atomic(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))


def centre_groups(df, centre: str | None, manifest="manifest"):
    """The (N,) groups to centre features on: ``None``, the ``video`` or the ``camera`` column.
    Cameras must all be known (>= 0)."""
    if centre in (None, "none"):
        return None
    if centre not in ("video", "camera"):
        raise CionError(f"--centre {centre}: choose none, video or camera")
    groups = df[centre].to_numpy()
    if centre == "camera" and (groups < 0).any():
        raise CionError(f"{manifest}: {int((groups < 0).sum())} rows have camera -1 (unknown), "
                        "so features cannot be centred per camera. Fix: --centre video")
    return groups


def denoise_manifest(manifest: str | os.PathLike, features: str | os.PathLike,
                     out: str | os.PathLike, *, sigma_cst: float = 0.2, sigma_drm: float = 0.18,
                     range_half_width: int = 1000, levels="tracklet,video,cross",
                     cross_order: str = "sequence", calibrate: float | None = None,
                     false_links: float = 0.1, centre: str | None = None,
                     whiten: int | None = None, progress: bool = True) -> dict:
    """Denoise the tracklets of a manifest into identities.

    Writes ``out`` (the input rows and columns, ``identity`` filled, ``status`` added; relative
    image paths rewritten to name the same files from ``out``'s folder),
    ``OUT.stats.json`` (parameters and per-level statistics) and ``OUT.png`` (summary figure).

    Args:
        manifest: input Parquet manifest; features: ``.npy`` (rows of the manifest, D).
        calibrate: if given, a quantile in (0, 1): the thresholds are chosen from the features
            by :func:`cion.denoise.calibrate_thresholds` instead of ``sigma_cst``/``sigma_drm``.
        false_links: the calibration's budget of false cross-video links per tracklet.
        centre: ``None``, ``"video"`` or ``"camera"``: centre every feature on the mean of its
            video / camera first (see :meth:`cion.denoise.features.FeatureSource.centre`).
        whiten: None / 0, or the dimensions kept by PCA whitening (after centring).

    Returns the stats dictionary that was written.
    """
    from cion.data.manifest import read_manifest, rebase_paths, write_manifest
    from cion.denoise.calibrate import calibrate_thresholds
    from cion.denoise.features import open_features, prepare_features
    from cion.denoise.figure import plot_levels
    from cion.denoise.pipeline import denoise, parse_levels

    t0 = time.perf_counter()
    lv = parse_levels(levels)                       # fail on a bad level before reading anything
    out_p, stats_p, png_p = output_paths(out)
    if out_p.suffix != ".parquet":
        raise CionError(f"--out {out_p}: the output manifest must end in .parquet")
    ensure_writable_file(out_p)
    df = read_manifest(manifest)
    X = open_features(features)
    if X.shape[0] != len(df):
        raise CionError(f"{features} has {X.shape[0]} rows but {manifest} has {len(df)}; features "
                        "must hold one row per manifest row, in manifest order (re-run `cion "
                        "extract` on this manifest)")
    # centring / whitening fitted once, shared by the calibration and the denoising
    src = prepare_features(features, centre=centre_groups(df, centre, manifest), whiten=whiten)
    calib = None
    if calibrate is not None:
        calib = calibrate_thresholds(src, df["video"].to_numpy(), df["tracklet"].to_numpy(),
                                     quantile=float(calibrate), false_links=false_links,
                                     range_half_width=range_half_width)
        sigma_cst, sigma_drm = calib["sigma_cst"], calib["sigma_drm"]
    res = denoise(src, df["video"].to_numpy(), df["tracklet"].to_numpy(),
                  sigma_cst=sigma_cst, sigma_drm=sigma_drm, range_half_width=range_half_width,
                  levels=lv, cross_order=cross_order, progress=progress)
    result = rebase_paths(df, out_p.parent)        # relative paths: for the output's folder
    result["identity"] = res.identity
    result["status"] = res.status.astype(str)
    stats = {"manifest": str(manifest), "features": str(features), "output": str(out_p),
             "params": res.params, "calibration": calib, "levels": res.stats,
             "total_seconds": round(time.perf_counter() - t0, 3)}
    if "true_identity" in df.columns:
        from cion.denoise.metrics import pairwise_precision_recall
        stats["ground_truth"] = pairwise_precision_recall(
            res.identity, df["true_identity"].to_numpy())
    out_p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_png = tempfile.mkstemp(prefix=f".{png_p.name}.", suffix=".png", dir=png_p.parent)
    os.close(fd)
    try:
        plot_levels(res.stats, tmp_png, title=f"cion denoise: {Path(manifest).name}")
        write_manifest(result, out_p)
        _write_json_atomic(stats, stats_p)
        os.replace(tmp_png, png_p)
    finally:
        if os.path.exists(tmp_png):
            os.unlink(tmp_png)
    return stats
