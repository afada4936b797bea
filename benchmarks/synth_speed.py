"""Synthetic world generation speed: images/s on one core (target: >= 500 at 128x64).

    python benchmarks/synth_speed.py [--identities 300] [--videos 80] [--image-size 128x64]

Generates a full world (planning, rendering, JPEG encoding, writing, manifest, contact sheet)
in a temporary directory with one worker process and prints the rates. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from cion.data.synth import WorldConfig, generate_world, plan_world  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--identities", type=int, default=300)
    ap.add_argument("--videos", type=int, default=80)
    ap.add_argument("--bench-identities", type=int, default=200)
    ap.add_argument("--image-size", default="128x64")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    h, w = (int(v) for v in args.image_size.split("x"))
    cfg = WorldConfig(identities=args.identities, videos=args.videos,
                      bench_identities=args.bench_identities, image_size=(h, w))
    t0 = time.perf_counter()
    world = plan_world(cfg)
    plan_s = time.perf_counter() - t0
    n = len(world.pretrain_shots) + len(world.bench_shots)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate_world(tmp, cfg, workers=args.workers, progress=False)
        total_s = time.perf_counter() - t0
    print(f"world: {cfg.identities} identities, {cfg.videos} videos, {h}x{w}, {n} images, "
          f"{args.workers} worker(s)")
    print(f"planning           {plan_s:8.2f} s")
    print(f"end to end         {total_s:8.2f} s   {n / total_s:8.0f} images/s "
          f"({n / total_s / args.workers:.0f} per worker)")


if __name__ == "__main__":
    main()
