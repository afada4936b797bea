"""How well denoising correlates identities on the synthetic world (the analogue of paper Fig. 5).

    .venv/bin/python benchmarks/denoise_synth_quality.py                 # makes the default world
    .venv/bin/python benchmarks/denoise_synth_quality.py --world /tmp/w  # reuse a world
    .venv/bin/python benchmarks/denoise_synth_quality.py --features F.npy   # e.g. from `cion extract`
    .venv/bin/python benchmarks/denoise_synth_quality.py --world demo_out/world --size 64x32 \
        --centre camera --whiten 64 --false-links 1.0 --quantiles 0.8     # the demo's setting

Features: the stripe colour histogram of :mod:`cion.handcrafted` unless ``--features`` is given.
The first table is the extractor's cross-video tracklet linking (mAP / rank-1 of tracklet
centroids, :func:`cion.denoise.metrics.tracklet_linking_map`) raw and centred per video and per
camera; ``--centre`` and ``--whiten`` pick the treatment the denoising tables use,
``--false-links`` the calibration's link budget.
For each threshold setting (the paper's 0.2 / 0.18, and thresholds calibrated from the features
at a few quantiles, see :func:`cion.denoise.calibrate_thresholds`) the levels are added one by
one (raw tracklets, +tracklet, +video, +cross) and the result is compared with ``true_identity``:
pairwise precision / recall / F1 over image pairs (see :mod:`cion.denoise.metrics`), identities,
images discarded, and how many of the noise rows (ID switches, false detections) left their
tracklet. A second table measures the cross-video ordering option (issue item 4): true image
pairs linked and level-3 seconds for the paper's sequence order vs the coarse feature order
(and their union) at several sliding-range half-widths.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def load_world(world: str | None, tmp: str) -> Path:
    if world:
        return Path(world)
    from cion.data.synth import WorldConfig, generate_world

    root = Path(tmp) / "world"
    print("generating the default synthetic world (cion synth defaults, seed 0)...", flush=True)
    generate_world(root, WorldConfig(), workers=1, progress=False)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", default=None, help="world directory made by `cion synth`")
    ap.add_argument("--features", default=None, help=".npy features of the pretrain manifest")
    ap.add_argument("--quantiles", default="0.8,0.9,0.95", help="calibration quantiles to show")
    ap.add_argument("--ranges", default="1000,50,10", help="r_s values for the ordering table")
    ap.add_argument("--centre", default="none", choices=["none", "video", "camera"],
                    help="centre features per video / camera before denoising")
    ap.add_argument("--whiten", type=int, default=0, help="PCA-whiten to this many dims (0: off)")
    ap.add_argument("--false-links", type=float, default=0.1, help="calibration link budget")
    ap.add_argument("--size", default="128x64", help="histogram image size HxW (the demo: 64x32)")
    args = ap.parse_args()

    from cion.data.manifest import read_manifest, resolve_paths
    from cion.denoise import calibrate_thresholds, denoise
    from cion.denoise.io import centre_groups
    from cion.denoise.metrics import pairwise_precision_recall, tracklet_linking_map

    with tempfile.TemporaryDirectory() as tmp:
        root = load_world(args.world, tmp)
        df = read_manifest(root / "pretrain" / "manifest.parquet")
        if args.features:
            feats = np.load(args.features, mmap_mode="r")
            fname = args.features
        else:
            from cion.handcrafted import colour_histogram_files
            t0 = time.perf_counter()
            h, w = (int(v) for v in args.size.lower().split("x"))
            feats = colour_histogram_files(resolve_paths(df), size=(h, w))
            fname = f"stripe colour histogram ({feats.shape[1]}-d, {time.perf_counter() - t0:.1f}s)"
        video, tracklet = df["video"].to_numpy(), df["tracklet"].to_numpy()
        true = df["true_identity"].to_numpy()
        noise = df["noise"].to_numpy().astype(str)
        print(f"world {root}: {len(df):,} images, {df['tracklet'].nunique():,} tracklets, "
              f"{df['video'].nunique()} videos, {len(set(true[true >= 0]))} people; "
              f"noise rows: {int((noise != 'none').sum())}; features: {fname}\n")

        print("| centring | cross-video tracklet linking mAP | rank-1 | queries |")
        print("|---|---|---|---|")
        for c in ("none", "video", "camera"):
            if c == "camera" and (df["camera"] < 0).any():
                continue
            link = tracklet_linking_map(feats, video, tracklet, true, centre_groups(df, c))
            print(f"| {c} | {link['mAP']:.3f} | {link['rank1']:.3f} | {link['queries']} |")
        groups = centre_groups(df, args.centre)
        whiten = args.whiten or None
        print(f"\ndenoising with features centred per {args.centre}, "
              + (f"whitened to {whiten} dimensions" if whiten else "not whitened")
              + f", link budget {args.false_links} false links per tracklet")

        settings = [("paper", 0.2, 0.18)]
        for q in (float(v) for v in args.quantiles.split(",") if v):
            c = calibrate_thresholds(feats, video, tracklet, quantile=q,
                                     false_links=args.false_links, centre=groups,
                                     whiten=whiten)
            print(f"calibrated q={q:g}: sigma_cst {c['sigma_cst']:.4f}, sigma_drm "
                  f"{c['sigma_drm']:.4f} (link probability {c['link_probability']:.1e}, "
                  f"{c['pairs']:,} cross-video tracklet pairs)")
            settings.append((f"calibrated q={q:g}", c["sigma_cst"], c["sigma_drm"]))
        stages = [("raw tracklets", ()), ("+ tracklet", ("tracklet",)),
                  ("+ video", ("tracklet", "video")), ("+ cross", ("tracklet", "video", "cross"))]
        print("| thresholds | sigma_cst / sigma_drm | stage | identities | precision | recall | F1 "
              "| discarded | noise rows out of their tracklet | clean rows out | n_S |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, sc, sd in settings:
            for sname, lv in stages:
                r = denoise(feats, video, tracklet, sigma_cst=sc, sigma_drm=sd, levels=lv,
                            centre=groups, whiten=whiten)
                m = pairwise_precision_recall(r.identity, true)
                moved = r.status_code != 0
                noisy = noise != "none"
                print(f"| {name} | {sc:.3f} / {sd:.3f} | {sname} | {r.identity.max() + 1:,} | "
                      f"{m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | "
                      f"{int((r.status_code == 2).sum()):,} | "
                      f"{moved[noisy].mean():.1%} | {moved[~noisy].mean():.1%} | "
                      f"{r.stats[-1]['n_S']:.3f} |")

        # ---- item 4: ordering of the cross-video sequence -------------------------------------
        name, sc, sd = settings[min(1, len(settings) - 1)]
        print(f"\ncross-video ordering ({name}: sigma_cst {sc:.3f}, sigma_drm {sd:.3f}); "
              "true pairs = image pairs of one person put in one identity")
        print("| r_s | order | identities | precision | recall | true pairs | extra true pairs "
              "vs sequence | level-3 seconds |")
        print("|---|---|---|---|---|---|---|---|")
        for rs in (int(v) for v in args.ranges.split(",") if v):
            base = None
            for order in ("sequence", "coarse", "both"):
                r = denoise(feats, video, tracklet, sigma_cst=sc, sigma_drm=sd,
                            range_half_width=rs, cross_order=order, noise_stats=False,
                            centre=groups, whiten=whiten)
                m = pairwise_precision_recall(r.identity, true)
                base = m["hit_pairs"] if base is None else base
                sec = {s["level"]: s for s in r.stats}["cross"]["seconds"]
                print(f"| {rs} | {order} | {r.identity.max() + 1:,} | {m['precision']:.3f} | "
                      f"{m['recall']:.3f} | {m['hit_pairs']:,} | {m['hit_pairs'] - base:+,} | "
                      f"{sec:.3f} |")


if __name__ == "__main__":
    main()
