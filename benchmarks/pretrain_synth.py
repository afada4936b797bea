"""Does a short CPU pre-training help? Loss and zero-shot kNN mAP on the synthetic world.

    .venv/bin/python benchmarks/pretrain_synth.py [--world DIR] [--config configs/pretrain/demo_cpu.yaml]
        [--identity tracklet|true|instance|column] [--epochs E] [--out runs/bench_synth]
    .venv/bin/python benchmarks/pretrain_synth.py --supervised-steps 600   # learnability check

Generates a small synthetic world (unless --world is given), evaluates the randomly initialised
backbone (query vs gallery, cosine kNN, Market-1501 protocol), pre-trains it with CION on the
pre-training manifest with the chosen identity labels, and evaluates the teacher backbone.
Prints a table and writes OUT/bench.json.

``--supervised-steps N`` instead trains the same backbone with a linear classifier and
cross-entropy on the true identities (one augmented global crop per image, AdamW lr 1e-3,
batch 32) for N steps: an upper bound showing that the world, the crops and the evaluation are
learnable at this scale.

Identity labels: ``tracklet`` = tracklets as identities (what CION gets before denoising),
``true`` = the world's true identities (an oracle denoiser), ``instance`` = every image its own
identity (plain DINO, curriculum K = 1), ``column`` = the manifest's ``identity`` column
(e.g. the output of ``cion denoise``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, default=None)
    ap.add_argument("--config", type=Path, default=Path("configs/pretrain/demo_cpu.yaml"))
    ap.add_argument("--identity", choices=["tracklet", "true", "instance", "column"], default="tracklet")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--arch", default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_synth"))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared machine more threads than free cores is much slower)")
    ap.add_argument("--supervised-steps", type=int, default=0,
                    help="train a supervised classifier on the true identities instead")
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from cion.data.manifest import read_manifest
    from cion.pretrain import PretrainConfig, pretrain
    from cion.models.backbone import build_backbone, load_backbone
    from cion.evaluation.retrieval import zero_shot_map

    world = args.world
    if world is None:
        from cion.data.synth import WorldConfig, generate_world
        world = args.out / "world"
        if not (world / "pretrain" / "manifest.parquet").exists():
            generate_world(world, WorldConfig(identities=60, videos=16, cameras=4, image_size=(64, 32),
                                              bench_identities=60, seed=0), workers=1, progress=False)
    df = read_manifest(world / "pretrain" / "manifest.parquet")
    cfg = PretrainConfig.from_yaml(args.config, epochs=args.epochs, arch=args.arch)
    if args.supervised_steps:
        supervised(df, cfg, world, args.supervised_steps)
        return
    if args.identity == "tracklet":
        df["identity"] = df["tracklet"]
    elif args.identity == "true":
        df["identity"] = df["true_identity"]
    elif args.identity == "instance":
        df["identity"] = range(len(df))
        cfg.curriculum = [[0, 1]]
    size = cfg.global_size

    torch.manual_seed(cfg.seed)
    random_model = build_backbone(cfg.arch, size)
    t0 = time.perf_counter()
    before = zero_shot_map(random_model, world / "market", size)
    run_dir = args.out / f"{cfg.arch}_{args.identity}"
    result = pretrain(df, cfg, run_dir, progress=True)
    train_s = time.perf_counter() - t0
    after = zero_shot_map(load_backbone(cfg.arch, result.backbone, size), world / "market", size)
    losses = [h["loss"] for h in result.history]
    n = max(1, len(losses) // 5)
    report = {"arch": cfg.arch, "identity": args.identity, "images": len(df), "steps": result.steps,
              "epochs": cfg.epochs, "loss_first_avg": sum(losses[:n]) / n,
              "loss_last_avg": sum(losses[-n:]) / n, "random_init": before, "pretrained": after,
              "seconds": train_s, "collapsed": result.collapsed}
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    print(f"\n| {cfg.arch} ({args.identity} identities, {result.steps} steps, {train_s:.0f} s) "
          f"| mAP | rank-1 |\n|---|---|---|")
    print(f"| random init | {before['mAP'] * 100:.1f} | {before['rank1'] * 100:.1f} |")
    print(f"| CION pre-trained | {after['mAP'] * 100:.1f} | {after['rank1'] * 100:.1f} |")
    print(f"loss (mean of first / last fifth of logged steps): {report['loss_first_avg']:.3f} -> "
          f"{report['loss_last_avg']:.3f}")


def supervised(df, cfg, world: Path, steps: int) -> None:
    """Cross-entropy on the true identities (see the module docstring); prints mAP before/after."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from cion.data.manifest import resolve_paths
    from cion.data.transforms import MultiCropAugment, MultiCropConfig
    from cion.models.backbone import build_backbone
    from cion.evaluation.retrieval import zero_shot_map

    keep = df["true_identity"].to_numpy() >= 0
    paths = [p for p, k in zip(resolve_paths(df), keep) if k]
    y = torch.from_numpy(np.unique(df["true_identity"].to_numpy()[keep], return_inverse=True)[1])
    aug = MultiCropAugment(MultiCropConfig(global_size=cfg.global_size, local_size=cfg.local_size,
                                           local_crops=0, **cfg.augment))
    images = [aug.load(p) for p in paths]
    torch.manual_seed(cfg.seed)
    model = build_backbone(cfg.arch, cfg.global_size)
    head = torch.nn.Linear(model.feature_dim, int(y.max()) + 1)
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-3)
    before = zero_shot_map(model, world / "market", cfg.global_size)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = rng.choice(len(paths), 32)
        x = torch.stack([aug(images[i], int(rng.integers(1 << 40)))[0][0] for i in idx])
        loss = F.cross_entropy(head(model(x)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % max(1, steps // 5) == 0:
            print(f"step {step + 1}/{steps}: loss {loss.item():.3f}", flush=True)
    after = zero_shot_map(model, world / "market", cfg.global_size)
    print(f"\n| {cfg.arch}, supervised on true identities, {steps} steps, "
          f"{time.perf_counter() - t0:.0f} s | mAP | rank-1 |\n|---|---|---|")
    print(f"| random init | {before['mAP'] * 100:.1f} | {before['rank1'] * 100:.1f} |")
    print(f"| supervised | {after['mAP'] * 100:.1f} | {after['rank1'] * 100:.1f} |")


if __name__ == "__main__":
    main()
