"""Side study: are tracklet positives worth more than instance positives under a *contrastive* loss?

    .venv/bin/python benchmarks/contrastive_positives.py --demo demo_out --labels tracklet --seed 0

The literature's tracklet-level methods beat instance-level ones with contrastive losses
(LUP-NL against LUP, both MoCo-based), where instance discrimination pushes the frames of one
tracklet apart as negatives. DINO has no negatives, and in the demo tracklets do not beat
instance-level. This script swaps the loss and keeps everything else of a demo run: the world
and labels of a finished ``cion demo``, the backbone and its initialisation, the recipe's global
crops and augmentation, the identity sampler with the same curriculum (instance: K = 1), the step
budget, the zero-shot evaluation. The loss is supervised contrastive (SupCon, Khosla et al.
2020) over the two global views of every image in the batch: positives are the views of images
with the same label, negatives every other view; with instance labels it is SimCLR's NT-Xent.
AdamW, cosine learning rate, a 2-layer projection head. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def supcon_loss(z, labels, temperature: float):
    """SupCon over (V, D) L2-normalised projections ``z`` with (V,) ``labels``: for every view,
    minus the mean log-probability of its positives among all other views."""
    import torch

    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    return -(log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1)).mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=Path("demo_out"))
    ap.add_argument("--labels", default="tracklet", choices=["instance", "tracklet", "clean_tracklet",
                                                              "cion", "oracle"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="default: the demo's")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--temperature", type=float, default=0.1)
    args = ap.parse_args()

    import numpy as np
    import pandas as pd
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    import cion.compat  # noqa: F401  (torchvision on CPU-only torch)
    from cion.data.manifest import resolve_paths
    from cion.data.sampler import IdentityBatchSampler
    from cion.data.transforms import MultiCropAugment, MultiCropConfig, MultiCropDataset
    from cion.demo.jobs import epochs_for_budget
    from cion.demo.plan import demo_plan
    from cion.demo.runner import demo_recipe
    from cion.models.backbone import build_backbone, feature_width
    from cion.evaluation.retrieval import zero_shot_map

    torch.set_num_threads(1)
    results = args.demo / "results.json"
    if not results.exists():
        raise SystemExit(f"{results}: not found. Fix: run `cion demo --out {args.demo}` first")
    plan = demo_plan(json.loads(results.read_text())["plan"]["quick"])
    recipe = demo_recipe(plan)
    steps = args.steps or plan.steps
    size = tuple(recipe["global_size"])
    source = "tracklet" if args.labels == "clean_tracklet" else args.labels
    df = pd.read_parquet(args.demo / "labels" / f"{source}.parquet")
    df.attrs["root"] = str(args.demo / "world" / "pretrain")
    labels = df["identity"].to_numpy(np.int64)
    if args.labels == "clean_tracklet":
        labels = np.where(df["noise"].to_numpy() == "none", labels, -1)
    fractions = [[0.0, 1]] if args.labels == "instance" else [list(c) for c in plan.curriculum]
    epochs, curriculum = epochs_for_budget(labels[labels >= 0], recipe["batch_size"], fractions, steps)
    sampler = IdentityBatchSampler(labels, recipe["batch_size"], curriculum, args.seed)
    augment = MultiCropAugment(MultiCropConfig(global_size=size, local_crops=0,
                                               global_scale=tuple(recipe["global_scale"]),
                                               **recipe.get("augment", {})))
    loader = torch.utils.data.DataLoader(MultiCropDataset([str(p) for p in resolve_paths(df)], augment),
                                         batch_sampler=sampler, num_workers=0)

    torch.manual_seed(args.seed)          # the demo's initialisation for this seed
    backbone = build_backbone(recipe["arch"], size)
    width = feature_width(backbone, size)
    head = nn.Sequential(nn.Linear(width, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 128))
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.04)
    t0, step, losses = time.perf_counter(), 0, []
    for epoch in range(epochs):
        sampler.set_position(epoch)
        for glob, _, ids in loader:
            if step >= steps:
                break
            lr = args.lr * (min(1.0, (step + 1) / (steps / 10)) if step < steps / 10 else
                            0.5 * (1 + math.cos(math.pi * step / steps)))
            for g in opt.param_groups:
                g["lr"] = lr
            views = glob.transpose(0, 1).flatten(0, 1)                 # (2B, 3, H, W)
            z = F.normalize(head(backbone(views)), dim=1)
            loss = supcon_loss(z, torch.as_tensor(ids).repeat(2), args.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
    scores = zero_shot_map(backbone.eval(), args.demo / "world" / "market", size)
    n = max(1, len(losses) // 5)
    print(json.dumps({"labels": args.labels, "seed": args.seed, "steps": step, "loss": "supcon",
                      "lr": args.lr, "temperature": args.temperature,
                      "mAP": round(100 * scores["mAP"], 2), "rank1": round(100 * scores["rank1"], 2),
                      "loss_first_fifth": round(sum(losses[:n]) / n, 3),
                      "loss_last_fifth": round(sum(losses[-n:]) / n, 3),
                      "seconds": round(time.perf_counter() - t0)}))


if __name__ == "__main__":
    main()
