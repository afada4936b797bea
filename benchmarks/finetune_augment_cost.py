"""Where fine-tuning's augmentation spends its CPU time (``cion.finetune.transforms.TrainAugment``:
flip, pad + crop, normalise, random erasing on a uint8 batch), to decide whether the worker /
device split of pre-training would help it (docs/gpu.md).

    .venv/bin/python benchmarks/finetune_augment_cost.py [--batch 64] [--size 256x128] [--threads 1]

Prints images/s per core of the whole augmentation and of its parts: the uint8 geometric part
(flip + pad-crop, what would stay on the CPU) and the float part (normalise + erasing, what
would move to the GPU), plus the bytes per image that cross to the GPU either way.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", default="256x128")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    import numpy as np
    import torch

    from cion.finetune.transforms import TrainAugment, normalize

    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, h, w, 3), dtype=np.uint8)
    aug = TrainAugment()
    geometric = TrainAugment(erasing_p=0.0)   # flip + pad-crop (+ normalise, subtracted below)
    x = normalize(images)

    def best(fn):
        fn()
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    whole = best(lambda: aug(images, rng))
    geo_norm = best(lambda: geometric(images, rng))
    norm = best(lambda: normalize(images))
    erase = best(lambda: aug._erase(x.clone(), rng)) - best(lambda: x.clone())
    geo = geo_norm - norm
    b = args.batch
    print(f"TrainAugment, batch {b} of {h}x{w}, {args.threads} thread(s), best of {args.rounds}")
    print("| part | images/s | ms per batch |\n|---|---|---|")
    for name, s in (("whole (flip, pad-crop, normalise, erasing)", whole),
                    ("uint8 flip + pad-crop (would stay on CPU)", geo),
                    ("normalise (would move)", norm), ("erasing (would move)", erase)):
        print(f"| {name} | {b / s:.0f} | {1e3 * s:.1f} |")
    print(f"bytes to the GPU per image: {3 * h * w * 4} float32 now, {3 * h * w} uint8 after a split")


if __name__ == "__main__":
    main()
