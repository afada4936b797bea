"""What each demo backbone learned about its own pre-training images: nearest neighbours.

    .venv/bin/python benchmarks/demo_neighbours.py --demo demo_out

For every method of a finished ``cion demo`` (and the random initialisation) and every seed, the
backbone embeds the pre-training images and two rates are printed:

* *same tracklet*: the share of images whose nearest other image is a frame of their own tracklet
  (what tracklet-level positives teach);
* *cross-video*: the share of images whose nearest image *from another video* shows the same
  person (what the benchmark asks for: its positives are always in another camera).

Only images of a person count (false detections are left out as queries). O(N^2) similarities in
blocks: meant for the demo's few thousand images. ``--extra NAME=RUN_DIR`` adds backbones of
other runs, e.g. those ``benchmarks/demo_ablation.py`` writes; they also get the pair-distance
table of the demo report (:mod:`cion.demo.pairs`), printed for every backbone.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def neighbour_rates(features: np.ndarray, tracklet: np.ndarray, video: np.ndarray,
                    person: np.ndarray, block: int = 1024) -> dict:
    """``{"same_tracklet", "cross_video"}`` rates (see the module docstring).

    Args:
        features: (N, D) L2-normalised rows; tracklet, video, person: (N,) labels (person -1:
            not a person, never a query).
    """
    n = len(features)
    nearest = np.empty(n, dtype=np.int64)
    nearest_other_video = np.empty(n, dtype=np.int64)
    for a in range(0, n, block):
        b = min(a + block, n)
        sim = features[a:b] @ features.T                                  # (b-a, N)
        sim[np.arange(b - a), np.arange(a, b)] = -np.inf                  # not itself
        nearest[a:b] = sim.argmax(axis=1)
        sim[video[a:b, None] == video[None, :]] = -np.inf
        nearest_other_video[a:b] = sim.argmax(axis=1)
    q = person >= 0
    return {"same_tracklet": float((tracklet[nearest] == tracklet)[q].mean()),
            "cross_video": float((person[nearest_other_video] == person)[q].mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, default=Path("demo_out"), help="a finished `cion demo --out`")
    ap.add_argument("--extra", nargs="*", default=[], metavar="NAME=RUN_DIR",
                    help="more backbones of the demo's arch (RUN_DIR/backbone.safetensors)")
    args = ap.parse_args()

    import torch

    import cion.compat  # noqa: F401  (torchvision on CPU-only torch)
    from cion.data.manifest import read_manifest, resolve_paths
    from cion.models.backbone import build_backbone, load_backbone
    from cion.demo.pairs import MARGIN, PAIR_KINDS
    from cion.demo.plan import demo_plan
    from cion.demo.runner import demo_recipe, pair_diagnostic
    from cion.evaluation.retrieval import embed_paths

    results = args.demo / "results.json"
    if not results.exists():
        raise SystemExit(f"{results}: not found. Fix: run `cion demo --out {args.demo}` first")
    res = json.loads(results.read_text())
    arch, size = res["plan"]["arch"], tuple(res["plan"]["image_size"])
    df = read_manifest(args.demo / "world" / "pretrain" / "manifest.parquet")
    paths = [str(p) for p in resolve_paths(df)]
    tracklet = df.groupby(["video", "tracklet"], sort=False).ngroup().to_numpy()
    video = df["video"].factorize()[0]
    person = df["true_identity"].to_numpy(np.int64)
    print(f"{len(df)} pre-training images of {args.demo}; {arch} at {size[0]}x{size[1]}")
    print("| method | seed | nearest image in its own tracklet | nearest image from another video "
          "is the same person |")
    print("|---|---|---|---|")
    runs = list(res["runs"])
    for item in args.extra:
        name, sep, folder = item.partition("=")
        backbone = Path(folder) / "backbone.safetensors"
        if not sep or not backbone.exists():
            raise SystemExit(f"--extra {item}: expected NAME=RUN_DIR with RUN_DIR/backbone.safetensors")
        runs.append({"method": name, "seed": 0, "backbone": str(backbone)})
    for run in runs:
        if run["method"] == "random":
            torch.manual_seed(run["seed"])          # the initialisation the trained runs start from
            model = build_backbone(arch, size)
        else:
            own = args.demo / "runs" / f"{run['method']}_seed{run['seed']}" / "backbone.safetensors"
            run["backbone"] = str(own if own.exists() else run["backbone"])
            model = load_backbone(arch, run["backbone"], size)
        f = embed_paths(model.eval(), paths, size).numpy().astype(np.float64)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        r = neighbour_rates(f, tracklet, video, person)
        print(f"| {run['method']} | {run['seed']} | {r['same_tracklet']:.3f} | "
              f"{r['cross_video']:.3f} |", flush=True)

    pairs = pair_diagnostic(df, runs, demo_recipe(demo_plan(res["plan"]["quick"])), threads=2)
    kinds = PAIR_KINDS + (MARGIN,)
    print("\nMean cosine distance between two clean pre-training images that share ...")
    print("| method | seed | " + " | ".join(kinds) + " |\n|---|---|" + "---|" * len(kinds))
    for method, row in pairs.items():
        for one in row["seeds"]:
            print(f"| {method} | {one['seed']} | " + " | ".join(f"{one[k]:.3f}" for k in kinds) + " |")


if __name__ == "__main__":
    main()
