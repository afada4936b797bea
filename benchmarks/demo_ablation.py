"""One more pre-training run on a finished demo's world: other labellings, other recipe values.

    .venv/bin/python benchmarks/demo_ablation.py --demo demo_out --labels clean_tracklet --seed 0
    .venv/bin/python benchmarks/demo_ablation.py --demo demo_out --labels instance --set base_lr=2e-3

Runs exactly what ``cion demo`` runs for one method (same recipe, step budget, curriculum,
evaluation, short fine-tune), on the world and labels that ``cion demo --out DEMO`` left behind,
and prints one JSON line: zero-shot mAP / rank-1 on the benchmark, mAP after the fine-tune, the
loss at the start and the end.

Labellings: the demo's own (``instance``, ``tracklet``, ``cion_video``, ``cion``, ``oracle``)
``clean_tracklet``: the raw tracklets with their ID-switch and false-detection images dropped
(ground truth), which separates what tracklet noise costs from what tracklets give; and
``video_oracle``: the true identities within each video but never linked across videos (a
perfect single-video denoiser), which separates what same-video positives give from what
cross-video positives (``oracle``) give. ``--steps N`` changes the step budget (default: the
demo's), to ask whether a method only needs longer.
``--set key=value`` overrides recipe values (YAML syntax), e.g. ``base_lr=2e-3``;
``--curriculum 0:2,0.4:4,0.6:6,0.8:8`` replaces the images-per-identity schedule ((fraction of
the budget, K) pairs; this one is the paper's).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=Path("demo_out"), help="a finished `cion demo --out`")
    ap.add_argument("--labels", default="clean_tracklet",
                    choices=["instance", "tracklet", "clean_tracklet", "video_oracle", "cion_video", "cion",
                             "oracle"])
    ap.add_argument("--steps", type=int, default=None, help="pre-training steps (default: the demo's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--curriculum", default=None, metavar="FRAC:K,...")
    ap.add_argument("--out", type=Path, default=Path("runs/demo_ablation"))
    args = ap.parse_args()

    import numpy as np
    import pandas as pd
    import yaml

    from cion.demo.jobs import pretrain_and_evaluate
    from cion.demo.plan import demo_plan
    from cion.demo.runner import demo_job, demo_recipe

    results = args.demo / "results.json"
    if not results.exists():
        raise SystemExit(f"{results}: not found. Fix: run `cion demo --out {args.demo}` first")
    plan = demo_plan(json.loads(results.read_text())["plan"]["quick"])
    if args.steps is not None:
        plan.steps = args.steps
    source = {"clean_tracklet": "tracklet", "video_oracle": "oracle"}.get(args.labels, args.labels)
    df = pd.read_parquet(args.demo / "labels" / f"{source}.parquet")
    if args.labels == "clean_tracklet":
        df["identity"] = np.where(df["noise"] == "none", df["identity"], -1)
    if args.labels == "video_oracle":
        person = df["true_identity"].to_numpy() >= 0
        per_video = df.groupby(["video", "true_identity"], sort=False).ngroup().to_numpy()
        df["identity"] = np.where(person, per_video, -1)
    manifest = args.out / f"{args.labels}.parquet"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(manifest, index=False)

    recipe = demo_recipe(plan)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in recipe:
            raise SystemExit(f"--set {item}: expected KEY=VALUE with KEY one of {sorted(recipe)}")
        recipe[key] = yaml.safe_load(value)
    curriculum = None
    if args.curriculum:
        try:
            curriculum = [[float(f), int(k)] for f, k in (p.split(":") for p in args.curriculum.split(","))]
        except ValueError:
            raise SystemExit(f"--curriculum {args.curriculum}: expected FRACTION:K pairs separated "
                             "by commas, e.g. 0:2,0.4:4,0.6:6,0.8:8") from None
    job = demo_job(plan, args.labels, args.seed, manifest, str(args.demo / "world" / "pretrain"),
                   args.demo / "world", args.out / f"{args.labels}_seed{args.seed}", recipe,
                   curriculum)
    run = pretrain_and_evaluate(job)
    losses = [loss for _, loss, _ in run["losses"]]
    n = max(1, len(losses) // 5)
    print(json.dumps({"labels": args.labels, "seed": args.seed, "steps": plan.steps, "set": args.set,
                      "curriculum": job["curriculum"],
                      "mAP": round(100 * run["mAP"], 2), "rank1": round(100 * run["rank1"], 2),
                      "finetuned_mAP": (round(100 * run["finetuned"]["mAP"], 2)
                                        if "finetuned" in run else None),
                      "loss_first_fifth": round(sum(losses[:n]) / n, 3),
                      "loss_last_fifth": round(sum(losses[-n:]) / n, 3),
                      "seconds": round(run["seconds"])}))


if __name__ == "__main__":
    main()
