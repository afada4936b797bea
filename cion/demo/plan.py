"""What the demo runs: the world, the pre-training recipe, the methods, the seeds, the budget.

Two sizes: the full demo (at most 15 minutes on 2 CPU cores) and ``--quick`` (at most 3
minutes; CI's smoke test). Every method gets the same backbone, the same recipe and the same
number of optimiser steps, so the comparison isolates what the *positives* are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "demo_cpu.yaml"

#: method -> (label source, what it means). ``random`` is not trained.
METHODS = {
    "random": "no pre-training: the randomly initialised backbone",
    "instance": "instance-level self-distillation (DINO): every image its own identity",
    "tracklet": "tracklet-level: raw tracklets as identities, no denoising",
    "cion_video": "CION, single-tracklet + single-video denoising (levels 1-2)",
    "cion": "full CION: + cross-video sliding range and closure (levels 1-3)",
    "oracle": "ceiling: CION's loss on the world's true identities, i.e. a perfect denoiser "
              "(only a synthetic world has them)",
}
TRAINED = ("instance", "tracklet", "cion_video", "cion", "oracle")
#: methods that also get the unsupervised fine-tune (Cluster Contrast USL, the paper's Table 2)
USL_METHODS = ("random", "instance", "tracklet", "cion")


@dataclass
class DemoPlan:
    identities: int
    videos: int
    cameras: int
    bench_identities: int
    image_size: tuple[int, int]
    seeds: tuple[int, ...]
    steps: int                       # optimiser steps per pre-training run (same for all methods)
    # (fraction of the budget, images per identity K): the paper's 2 -> 4 -> 6 -> 8 at 40/60/80%
    curriculum: tuple = ((0.0, 2), (0.4, 4), (0.6, 6), (0.8, 8))
    calibrate_quantile: float = 0.8  # denoising thresholds read off the extractor's distances
    # the extractor's features are centred per camera (what a camera adds to all its images
    # goes) and PCA-whitened to this many dimensions (None: off) before denoising
    centre: str | None = "camera"
    whiten: int | None = 64
    # cross-video links allowed per tracklet by the calibration; above the library's 0.1
    # because this world is dense (see cion.denoise.calibrate); the report shows other values
    false_links: float = 1.0
    finetune_steps: int = 300        # short supervised fine-tune on the benchmark's train split
    # Cluster Contrast (USL) on the benchmark's train split without labels: epochs of
    # re-clustering x iterations each (0 epochs: no USL row)
    usl_epochs: int = 6
    usl_iters: int = 8
    tsne_identities: int = 15
    recipe: Path = RECIPE
    workers: int = 2                 # pre-training runs in parallel (one CPU thread each)
    overrides: dict = field(default_factory=dict)   # pre-training recipe values
    world: dict = field(default_factory=dict)       # WorldConfig values (e.g. turn_rate=0)


def demo_plan(quick: bool, seed: int = 0) -> DemoPlan:
    """The full demo, or the ``--quick`` one; ``seed`` shifts the world and every run's seed."""
    if quick:
        return DemoPlan(identities=30, videos=8, cameras=4, bench_identities=30,
                        image_size=(64, 32), seeds=(seed,), steps=80, finetune_steps=30,
                        usl_epochs=2, usl_iters=4)
    return DemoPlan(identities=60, videos=16, cameras=4, bench_identities=100,
                    image_size=(64, 32), seeds=(seed, seed + 1), steps=900)
