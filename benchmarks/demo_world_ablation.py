"""The demo's runs on a variant of its world: which world details move the comparison.

    .venv/bin/python benchmarks/demo_world_ablation.py --out runs/still \\
        --world turn_rate=0 light_ramp=0 tint_ramp=0 detail_ramp=0 \\
        --labels instance tracklet clean_tracklet cion

Builds the full demo's world with the ``WorldConfig`` values given to ``--world`` (any field:
``turn_rate``, ``light_ramp``, ``tint_ramp``, ``detail_ramp``, ``appearances_per_identity``,
``switch_rate``, ``look_strength``, ...), labels it as ``cion demo`` does (``clean_tracklet``:
the raw tracklets without their ID-switch and false-detection images, from the ground truth),
runs the demo's job for each labelling and seed (same recipe, step budget, curriculum, zero-shot
evaluation and short fine-tune; two runs at a time, one thread each) and prints one JSON line
per run: zero-shot mAP / rank-1 and mAP after the fine-tune, in %. Every run with the same world,
labelling and seed gives the same numbers as the demo itself.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LABELS = ("instance", "tracklet", "clean_tracklet", "cion_video", "cion", "oracle")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the world and the runs")
    ap.add_argument("--world", nargs="*", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--labels", nargs="+", default=["instance", "tracklet"], choices=LABELS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import dataclasses

    import numpy as np
    import pandas as pd
    import yaml

    from cion.data.manifest import resolve_paths
    from cion.data.synth import WorldConfig
    from cion.demo.plan import demo_plan
    from cion.demo.runner import _global_tracklets, demo_job, denoise_levels, make_world, run_jobs
    from cion.errors import CionError
    from cion.handcrafted import colour_histogram_files

    plan = demo_plan(quick=False)
    fields = {f.name for f in dataclasses.fields(WorldConfig)}
    for item in args.world:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--world {item}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        plan.world[key] = yaml.safe_load(value)
    try:
        world, df = make_world(plan, args.out, seed=0)
    except CionError as err:
        raise SystemExit(f"--world: {err}") from None
    labels = {"instance": np.arange(len(df)), "tracklet": _global_tracklets(df),
              "oracle": df["true_identity"].to_numpy(np.int64)}
    labels["clean_tracklet"] = np.where(df["noise"] == "none", labels["tracklet"], -1)
    if {"cion", "cion_video"} & set(args.labels):
        den = denoise_levels(df, colour_histogram_files(resolve_paths(df), size=plan.image_size), plan)
        labels["cion_video"], labels["cion"] = den["labels"]["video"], den["labels"]["cross"]
        print(json.dumps({"denoising": [{"level": s["level"], "identities": s["identities"],
                                         "precision": round(q["precision"], 3),
                                         "recall": round(q["recall"], 3)}
                                        for s, q in zip(den["stats"], den["quality"])]}), flush=True)
    jobs = []
    for name in args.labels:
        manifest = args.out / "labels" / f"{name}.parquet"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(df).assign(identity=labels[name]).to_parquet(manifest, index=False)
        for seed in args.seeds:
            jobs.append(demo_job(plan, name, seed, manifest, str(world / "pretrain"), world,
                                 args.out / "runs" / f"{name}_seed{seed}"))
    for run in run_jobs(jobs, args.workers, lambda msg: print(msg, file=sys.stderr, flush=True)):
        print(json.dumps({"world": plan.world, "labels": run["method"], "seed": run["seed"],
                          "mAP": round(100 * run["mAP"], 2), "rank1": round(100 * run["rank1"], 2),
                          "finetuned_mAP": round(100 * run["finetuned"]["mAP"], 2)}), flush=True)


if __name__ == "__main__":
    main()
