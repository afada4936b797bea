"""The demo on a tiny plan (12 identities, 12 steps, 1 worker; the demo's seeds and init), in
about two minutes on 2 CPU cores: a quick before/after check that a refactoring leaves the
demo's numbers and figures unchanged.

    python benchmarks/demo_tiny.py OUT_BEFORE   # on the old commit
    python benchmarks/demo_tiny.py OUT_AFTER    # on the new one
    # then compare OUT_*/results.json (all but timings) and cmp OUT_*/figures/*.png
    # (denoising_levels.png plots wall time and always differs)
"""
import sys

import cion.demo.runner as runner
from cion.demo.plan import DemoPlan


def tiny_plan(quick: bool, seed: int = 0) -> DemoPlan:
    return DemoPlan(identities=12, videos=4, cameras=3, bench_identities=24, image_size=(64, 32),
                    seeds=(seed,), steps=12, finetune_steps=6, workers=1, tsne_identities=5)


if __name__ == "__main__":
    runner.demo_plan = tiny_plan
    runner.run_demo(sys.argv[1] if len(sys.argv) > 1 else "demo_tiny_out", quick=True, seed=0,
                    workers=1)
