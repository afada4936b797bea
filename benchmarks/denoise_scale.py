"""Denoising at CION-AL scale: seconds and peak RSS per level on simulated clustered features.

    .venv/bin/python benchmarks/denoise_scale.py                    # 250K, 1M, 4M images
    .venv/bin/python benchmarks/denoise_scale.py --sizes 250000 --cross-order both

For each size a float16 ``.npy`` (N x 768, 16 images per tracklet) is written on the fly to a
temporary directory, then denoised in a fresh process (so the peak RSS is that of the denoising
alone: the memory map's resident pages count too). World: people with ~3 tracklets each, mostly
within ~200 positions of each other in the sequence (10% far away), tracklets of 16 images around
a tracklet centre, 5% of the images replaced by another person's image or a random vector (ID
switches / false detections), videos of 8-56 tracklets. Targets (issue 5): 4M images through
all three levels in <= 120 s on 2 cores, peak RSS <= 12 GB, 4x the images <= 4.5x the time.

``--world many-excluded`` (issue 16) is the same world seen by a weak or mismatched extractor:
every image's own noise is ~9x larger (norm ~3 against a person centre of norm ~1), so most
images of every tracklet lie beyond ``sigma_cst`` and level 1 excludes about 15 of 16 of them;
level 2 then has to look at almost every image again. Targets: 1M images <= 3 GB peak RSS and
<= 40 s on 2 cores, 4M images <= 12 GB.

    .venv/bin/python benchmarks/denoise_scale.py --world many-excluded --sizes 1000000,4000000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

DIM = 768
PER_TRACKLET = 16


#: scale of each image's own noise around its tracklet centre, per world
WORLDS = {"friendly": 0.33, "many-excluded": 3.0}


def simulate(path: str, n_images: int, dim: int = DIM, seed: int = 0, block: int = 1 << 16,
             world: str = "friendly"):
    """Write the features to ``path`` (fp16 .npy) and the layout next to it (.npz)."""
    rng = np.random.default_rng(seed)
    T = n_images // PER_TRACKLET
    n = T * PER_TRACKLET
    people = max(1, T // 3)
    person = np.repeat(np.arange(people), 3)[:T]
    person = np.concatenate([person, rng.integers(0, people, T - len(person))])
    person = person[np.argsort(np.arange(T) + rng.uniform(0, 200, T), kind="stable")]
    far = rng.random(T) < 0.10                                 # tracklets moved far away
    idx = np.flatnonzero(far)
    person[idx] = person[rng.permutation(idx)]
    sizes = rng.integers(8, 57, T)
    video_of_t = np.searchsorted(np.cumsum(sizes), np.arange(T), side="right")
    centres = rng.standard_normal((people, dim), dtype=np.float32) / np.sqrt(dim)
    bank = rng.standard_normal((1 << 17, dim), dtype=np.float32) * np.float32(0.33 / np.sqrt(dim))
    tr_off = np.float32(0.25)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    true = np.empty(n, dtype=np.int64)                         # person of each image, -1 none
    for a in range(0, n, block):                               # one iteration per block of rows
        b = min(n, a + block)
        t = np.arange(a, b) // PER_TRACKLET
        tc = centres[person[t]] + tr_off * bank[(t * 7919) % len(bank)]
        own = bank[rng.integers(0, len(bank), b - a)]
        if world != "friendly":                                # larger noise of each image
            own = own * np.float32(WORLDS[world] / WORLDS["friendly"])
        x = tc + own
        noisy = rng.random(b - a) < 0.05
        k = int(noisy.sum())
        other = rng.integers(0, people, k)
        switch = rng.random(k) < 0.5
        x[noisy] = np.where(switch[:, None],
                            centres[other] + bank[rng.integers(0, len(bank), k)],
                            rng.standard_normal((k, dim), dtype=np.float32) / np.sqrt(dim))
        tb = person[t]
        tb[noisy] = np.where(switch, other, -1)
        true[a:b] = tb
        out[a:b] = x.astype(np.float16)
    out.flush()
    del out
    video = video_of_t[np.arange(n) // PER_TRACKLET]
    tracklet = np.arange(n) // PER_TRACKLET
    np.savez(path + ".layout.npz", video=video, tracklet=tracklet, true=true)
    return n


def worker(path: str, cross_order: str, noise: bool) -> dict:
    from cion.denoise import denoise

    import resource

    lay = np.load(path + ".layout.npz")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = denoise(path, lay["video"], lay["tracklet"], cross_order=cross_order, noise_stats=noise)
    total = time.perf_counter() - t0
    use = resource.getrusage(resource.RUSAGE_SELF)
    cpu = use.ru_utime + use.ru_stime                   # all threads of this process
    load = (load0 + os.getloadavg()[0]) / 2
    from cion.denoise.metrics import pairwise_precision_recall
    quality = pairwise_precision_recall(res.identity, lay["true"])
    from cion.denoise.pipeline import _peak_rss_mb      # VmHWM: this process image only
    return {"total_seconds": total, "stats": res.stats, "peak_rss_mb": _peak_rss_mb(),
            "quality": quality, "cpu_seconds": cpu, "load": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="250000,1000000,4000000")
    ap.add_argument("--world", choices=sorted(WORLDS), default="friendly",
                    help="friendly: few images excluded at level 1; many-excluded: ~15 of 16")
    ap.add_argument("--cross-order", default="sequence")
    ap.add_argument("--no-noise", action="store_true", help="skip the n_S statistics")
    ap.add_argument("--dir", default=None, help="where to write the features (default: temp)")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        print(json.dumps(worker(args._worker, args.cross_order, not args.no_noise)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in sizes:
            path = os.path.join(tmp, f"feat_{n}.npy")
            tg = time.perf_counter()
            simulate(path, n, world=args.world)
            print(f"[{n:,} images] features written in {time.perf_counter() - tg:.1f}s "
                  f"({os.path.getsize(path) / 2**30:.2f} GiB fp16)", flush=True)
            cmd = [sys.executable, __file__, "--_worker", path, "--cross-order", args.cross_order]
            if args.no_noise:
                cmd.append("--no-noise")
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            os.unlink(path)
            by = {s["level"]: s for s in r["stats"]}
            levels_s = sum(by[k]["seconds"] for k in ("raw", "tracklet", "video", "cross"))
            noise_s = sum(s.get("noise_seconds", 0.0) for s in r["stats"])
            rows.append((n, by, levels_s, noise_s, r["total_seconds"], r["peak_rss_mb"],
                         r["cpu_seconds"], r["load"]))
            qq = r["quality"]
            print(f"  vs simulated persons: pairwise precision {qq['precision']:.4f} recall "
                  f"{qq['recall']:.4f}; level 1 excluded {by['tracklet']['excluded']:,}, "
                  f"reallocated {by['video']['reallocated']:,}; cross-video links "
                  f"{by['cross']['links']:,}", flush=True)
            print(f"  read+levels {levels_s:.1f}s, n_S {noise_s:.1f}s, total {r['total_seconds']:.1f}s,"
                  f" CPU {r['cpu_seconds']:.1f}s (load average {r['load']:.1f}), peak RSS "
                  f"{r['peak_rss_mb'] / 1024:.2f} GiB", flush=True)
    print()
    print(f"world: {args.world}; cross order: {args.cross_order}; seconds per stage (read = one pass over the features "
          "computing tracklet sums); RSS = process peak at the end of the stage, GiB")
    print("CPU s = user + system time of the denoising process (all threads), which a busy "
          "machine disturbs less than wall seconds; load = mean 1-min load average during the run")
    print("| images | read s | tracklet s | video s | cross s | levels total s | n_S s | total s "
          "| CPU s | load | RSS read / tracklet / video / cross | peak RSS GiB | identities | "
          "n_S raw -> cross |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, by, levels_s, noise_s, total, rss, cpu, load in rows:
        ns = (f"{by['raw'].get('n_S', float('nan')):.3f} -> {by['cross'].get('n_S', float('nan')):.3f}"
              + ("" if by["cross"].get("n_S_exact", True) else " (tree)"))
        per = " / ".join(f"{by[k]['peak_rss_mb'] / 1024:.2f}" for k in ("raw", "tracklet", "video", "cross"))
        print(f"| {n:,} | {by['raw']['seconds']:.1f} | {by['tracklet']['seconds']:.1f} | "
              f"{by['video']['seconds']:.1f} | {by['cross']['seconds']:.1f} | {levels_s:.1f} | "
              f"{noise_s:.1f} | {total:.1f} | {cpu:.1f} | {load:.1f} | {per} | {rss / 1024:.2f} | "
              f"{by['cross']['identities']:,} | {ns} |")
    for (n0, _, l0, _, t0, *_), (n1, _, l1, _, t1, *_) in zip(rows, rows[1:]):
        print(f"scaling {n0:,} -> {n1:,} ({n1 / n0:.1f}x images): levels {l1 / l0:.2f}x time, "
              f"total incl. n_S {t1 / t0:.2f}x")


if __name__ == "__main__":
    main()
