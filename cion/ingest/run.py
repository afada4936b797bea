"""Many videos -> one tracklet manifest: the video list, shards, worker processes, resuming,
the manifest, the run summary and the contact sheet.

Outputs in ``OUT`` (besides the per-video folders of :mod:`cion.ingest.pipeline`)::

    manifest.parquet                 all finished videos of this call
    ingest.json                      options, per-video summaries, failures, totals
    contact_sheet.png                a sample of tracklets, a row of crops each

Sharded runs write ``manifest.shard-K-of-N.parquet`` (joined by :func:`merge`),
``ingest.shard-K-of-N.json`` and ``contact_sheet.shard-K-of-N.png``, so shards may share ``OUT``.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from cion.data.manifest import rebase_paths, write_manifest
from cion.errors import CionError
from cion.fileio import atomic_write, ensure_writable_dir
from cion.ingest.decode import list_videos, video_key
from cion.ingest.pipeline import IngestOptions, ROW_DTYPES, ingest_video, is_done, rows_frame

_SHARD_NAME = re.compile(r"manifest\.shard-(\d+)-of-(\d+)\.parquet$")


def parse_shard(text: str | None, env: dict | None = None) -> tuple[int, int]:
    """``'K/N'`` (K = 0..N-1, like torchrun's RANK) -> (K, N); None -> RANK / WORLD_SIZE from the
    environment when set, else (0, 1)."""
    env = os.environ if env is None else env
    if text is None:
        if "RANK" in env and "WORLD_SIZE" in env:
            text = f"{env['RANK']}/{env['WORLD_SIZE']}"
        else:
            return 0, 1
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise CionError(f"--shard must look like K/N with 0 <= K < N, e.g. 0/4 (got '{text}')") from None
    if not 0 <= k < n:
        raise CionError(f"--shard {text}: K must be in 0..N-1 (shards are numbered like torchrun's RANK)")
    return k, n


def shard_videos(videos: list, k: int, n: int) -> list:
    """Videos of shard ``k`` of ``n``: every n-th of the sorted list, starting at k (balanced
    however the crawl orders long and short videos)."""
    return videos[k::n]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _work(job: tuple) -> dict:
    """Worker: ingest one video; failures come back as a record, never as an exception."""
    path, video_id, out, options, threads, progress = job
    if threads:
        import cv2
        cv2.setNumThreads(threads)
    start = time.perf_counter()

    def report(frame: int, announced: int) -> None:
        rate = frame / max(time.perf_counter() - start, 1e-9)
        total = f"/{announced}" if announced else ""
        _say(f"  {video_id}: frame {frame}{total}, {rate:.1f} frames/s")

    try:
        return ingest_video(path, video_id, out, options, progress=report if progress else None)
    except CionError as err:
        return {"video": video_id, "path": str(path), "error": str(err)}
    except Exception as err:  # a crawl must go on past one bad file; the message says which
        first = str(err).splitlines()[0][:200] if str(err) else ""
        return {"video": video_id, "path": str(path),
                "error": f"{path}: {type(err).__name__}: {first}. Fix: check or re-encode this video"}


def ingest(inputs: list, out: str | os.PathLike, options: IngestOptions = IngestOptions(),
           workers: int = 1, shard: str | None = None, progress: bool = False) -> dict:
    """Ingest videos (files or folders) into ``out``: see the module docstring.

    Finished videos made with the same options are not redone. Returns the run summary (also in
    ``out/ingest.json``); ``summary['failed']`` lists the videos that could not be read.
    """
    options.check()
    if workers < 1:
        raise CionError(f"--workers must be at least 1 (got {workers})")
    k, n = parse_shard(shard)
    videos = shard_videos(list_videos(inputs), k, n)
    out = ensure_writable_dir(out)
    if options.detector != "hog":            # a bad detector fails before any video
        from cion.ingest.detect import make_detector
        make_detector(options.detector, options.upscale)
    start = time.perf_counter()
    todo, results = [], {}
    for vid, path in videos:
        folder = out / "videos" / video_key(vid)
        if is_done(folder, options):
            results[vid] = json.loads((folder / "video.json").read_text()) | {"resumed": True}
        else:
            todo.append((vid, path))
    if progress:
        _say(f"ingest: {len(videos)} video(s)" + (f" in shard {k}/{n}" if n > 1 else "")
             + f", {len(videos) - len(todo)} already done, {workers} worker(s)")
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0
    jobs = [(str(path), vid, str(out), options, threads, progress) for vid, path in todo]
    done_frames = 0
    if workers == 1:
        iterator = map(_work, jobs)
        pool = None
    else:
        pool = get_context("spawn").Pool(workers)
        iterator = pool.imap_unordered(_work, jobs)
    try:
        for i, res in enumerate(iterator, 1):
            results[res["video"]] = res
            if progress:
                elapsed = time.perf_counter() - start
                if "error" in res:
                    line = f"FAILED {res['error']}"
                else:
                    done_frames += res["frames_read"]
                    line = (f"{res['video']}: {res['frames_read']} frames, {res['tracks_kept']} "
                            f"tracklets, {res['crops']} crops, {res['frames_per_second']:.1f} fps")
                eta = elapsed / i * (len(jobs) - i)
                _say(f"[{i}/{len(jobs)}] {line}  | {elapsed:.0f}s elapsed, ~{eta:.0f}s left")
    except BaseException:           # Ctrl-C or a crash: stop the workers, do not wait for them
        if pool is not None:
            pool.terminate()
            pool.join()
        raise
    if pool is not None:
        pool.close()
        pool.join()

    order = [vid for vid, _ in videos]
    finished = [vid for vid in order if "error" not in results[vid]]
    failed = [results[vid] for vid in order if "error" in results[vid]]
    warnings = [w for vid in finished for w in video_warnings(results[vid])]
    manifest = assemble(out, [video_key(v) for v in finished])
    tag = "" if n == 1 else f".shard-{k}-of-{n}"       # shards may share one --out
    name = f"manifest{tag}.parquet"
    write_manifest(manifest, out / name)
    sheet = (write_contact_sheet(manifest, out, out / f"contact_sheet{tag}.png")
             if len(manifest) else None)
    summary = {
        "manifest": str(out / name), "contact_sheet": str(sheet) if sheet else None,
        "shard": [k, n], "options": results[finished[0]]["options"] if finished else None,
        "videos": len(videos), "videos_ingested": len(finished), "videos_failed": len(failed),
        "tracklets": int(manifest["tracklet"].nunique()), "crops": len(manifest),
        "frames_read": int(sum(results[v]["frames_read"] for v in finished)),
        "seconds": round(time.perf_counter() - start, 3),
        "failed": [{"video": f["video"], "error": f["error"]} for f in failed],
        "warnings": warnings,
        "per_video": {v: results[v] for v in finished},
    }
    summary["summary"] = str(out / f"ingest{tag}.json")
    atomic_write(summary["summary"], lambda p: Path(p).write_text(json.dumps(summary, indent=1)))
    return summary


def video_warnings(res: dict) -> list[str]:
    """One-line notes on a finished video that the user should see (truncated, nobody found)."""
    notes = []
    if res.get("truncated"):
        notes.append(f"{res['path']}: the header announces {res['frames_announced']} frames but "
                     f"only {res['frames_read']} decode (truncated file?); the decoded frames were "
                     "ingested. Fix: re-download the video for the rest")
    if res.get("crops") == 0:
        notes.append(f"{res['path']}: no person tracked in {res['frames_read']} frames "
                     f"({res['detections']} detections); nothing added to the manifest. If people "
                     "are small, try --upscale 2 or a lower --min-height")
    return notes


def assemble(out: Path, keys: list[str]) -> pd.DataFrame:
    """Concatenate the rows of finished videos ``keys`` (in this order) and number tracklets
    uniquely: by video, then by the video's own tracklet number."""
    parts = [pd.read_parquet(out / "videos" / key / "rows.parquet") for key in keys]
    parts = [p for p in parts if len(p)]
    df = pd.concat(parts, ignore_index=True) if parts else rows_frame([])
    return renumber(df.astype(ROW_DTYPES))


def renumber(df: pd.DataFrame) -> pd.DataFrame:
    """Tracklet ids 0.. in order of (video, video_tracklet); rows sorted the same way by frame."""
    df = df.sort_values(["video", "video_tracklet", "frame"], kind="stable").reset_index(drop=True)
    df["tracklet"] = df.groupby(["video", "video_tracklet"], sort=False).ngroup().astype("int64")
    return df


def merge(inputs: list, out: str | os.PathLike) -> dict:
    """Join shard manifests into ``out/manifest.parquet``.

    ``inputs`` are run folders (or manifest files); a folder contributes its
    ``manifest.shard-K-of-N.parquet`` files, or its ``manifest.parquet`` when it has none.
    All shards 0..N-1 must be present. Image paths are rewritten relative to ``out``.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            shards = sorted(item.glob("manifest.shard-*-of-*.parquet"))
            files += shards or ([item / "manifest.parquet"] if (item / "manifest.parquet").is_file() else [])
            if not shards and not (item / "manifest.parquet").is_file():
                raise CionError(f"{item}: holds no manifest.shard-K-of-N.parquet or manifest.parquet."
                                " Fix: give the --out folders of the shard runs")
        elif item.is_file():
            files.append(item)
        else:
            raise CionError(f"{item}: no such file or folder. Fix: check the path")
    totals = {int(m.group(2)) for f in files if (m := _SHARD_NAME.search(f.name))}
    if len(totals) > 1:
        raise CionError(f"--merge: shard manifests of different shard counts {sorted(totals)}. "
                        "Fix: merge the shards of one run")
    if totals:
        n = totals.pop()
        seen = {int(m.group(1)) for f in files if (m := _SHARD_NAME.search(f.name))}
        missing = sorted(set(range(n)) - seen)
        if missing:
            raise CionError(f"--merge: shard(s) {missing} of {n} are missing. Fix: run "
                            f"`cion ingest ... --shard K/{n}` for them, or pass their folders")
    out = ensure_writable_dir(out)
    parts = []
    for f in files:
        df = pd.read_parquet(f)
        missing_cols = [c for c in ROW_DTYPES if c not in df.columns]
        if missing_cols:
            raise CionError(f"{f}: not a `cion ingest` manifest (no column(s) {missing_cols}). "
                            "Fix: give manifests written by cion ingest")
        parts.append(rebase_paths(df, out, root=f.resolve().parent))
    df = pd.concat(parts, ignore_index=True)
    dup = df.groupby("video")["path"].apply(lambda p: p.str.rsplit("/crops/", n=1).str[0].nunique())
    if (dup > 1).any():
        raise CionError(f"--merge: video '{dup[dup > 1].index[0]}' is in more than one input. "
                        "Fix: merge each video's results once")
    manifest = renumber(df.astype(ROW_DTYPES))
    write_manifest(manifest, out / "manifest.parquet")
    sheet = write_contact_sheet(manifest, out, out / "contact_sheet.png") if len(manifest) else None
    return {"manifest": str(out / "manifest.parquet"), "inputs": [str(f) for f in files],
            "videos": int(manifest["video"].nunique()), "tracklets": int(manifest["tracklet"].nunique()),
            "crops": len(manifest), "contact_sheet": str(sheet) if sheet else None}


def write_contact_sheet(manifest: pd.DataFrame, root: Path, path: Path, tracklets: int = 12,
                        per_tracklet: int = 10, seed: int = 0) -> Path:
    """A PNG with one row per sampled tracklet (up to ``tracklets``, seeded): ``per_tracklet``
    crops spread over its length, each 128x64, labelled with video, tracklet and crop count."""
    from PIL import Image, ImageDraw

    ids = manifest["tracklet"].unique()
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(ids, size=min(tracklets, len(ids)), replace=False))
    ch, cw, pad, label_w = 128, 64, 4, 190
    sheet = Image.new("RGB", (label_w + per_tracklet * (cw + pad), len(pick) * (ch + pad) + 20), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), f"{len(ids)} tracklets, {len(manifest)} crops; {len(pick)} sampled, "
              "crops spread over each tracklet", fill="black")
    for r, t in enumerate(pick):
        rows = manifest[manifest["tracklet"] == t]
        y = 20 + r * (ch + pad)
        first = rows.iloc[0]
        draw.text((4, y + 4), f"{str(first['video'])[-26:]}", fill="black")
        draw.text((4, y + 20), f"tracklet {int(t)}", fill="black")
        draw.text((4, y + 36), f"{len(rows)} crops, frames", fill="black")
        draw.text((4, y + 52), f"{int(rows['frame'].min())}-{int(rows['frame'].max())}", fill="black")
        sel = rows.iloc[np.round(np.linspace(0, len(rows) - 1, min(per_tracklet, len(rows)))).astype(int)]
        for c, p in enumerate(sel["path"].astype(str)):
            q = Path(p) if os.path.isabs(p) else root / p
            with Image.open(q) as im:
                sheet.paste(im.convert("RGB").resize((cw, ch)), (label_w + c * (cw + pad), y))
    return atomic_write(path, lambda p: sheet.save(p, format="PNG"))
