"""CPU inference speed of the ReIDZoo backbones: images/s at 256x128, batch 32.

Per model, in eval mode under ``torch.inference_mode``:
  eager          contiguous (NCHW) input and weights
  channels_last  weights and input in channels_last (CNN families only)
  reparam        RepViT/FastViT after branch folding (cion.models.reparameterize), NCHW
  reparam+cl     the same in channels_last

Each figure is the median over ``--iters`` timed batches after one warm-up batch. The default run
takes the smallest model of every family (10 models, a few minutes on 2 cores); ``--models all``
runs the 32. Timings on a shared machine vary: compare columns of the same run.

    .venv/bin/python benchmarks/zoo_speed.py                       # 10 models
    .venv/bin/python benchmarks/zoo_speed.py --models resnet50_ibn,vit_small --iters 5
    .venv/bin/python benchmarks/zoo_speed.py --models all --json zoo_speed.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cion.compat  # noqa: F401,E402  (must precede torchvision / timm)
import torch  # noqa: E402

from cion.models import FAMILIES, ZOO, create_model, list_models  # noqa: E402
from cion.models.reparam import reparameterize  # noqa: E402


def images_per_second(model, x: torch.Tensor, iters: int) -> float:
    """Median throughput (images/s) of ``model(x)`` over ``iters`` batches after one warm-up."""
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return x.shape[0] / statistics.median(times)


def bench_model(name: str, batch: int, size: tuple[int, int], iters: int) -> dict:
    """Throughput of every applicable variant of one model; keys are variant names."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(batch, 3, *size)
    row = {"eager": images_per_second(model, x, iters)}
    entry = ZOO[name]
    if entry.is_cnn:
        cl = model.to(memory_format=torch.channels_last)
        row["channels_last"] = images_per_second(cl, x.contiguous(memory_format=torch.channels_last), iters)
        model = cl.to(memory_format=torch.contiguous_format)
    if entry.reparameterizable:
        fused = reparameterize(model)
        row["reparam"] = images_per_second(fused, x, iters)
        fused = fused.to(memory_format=torch.channels_last)
        row["reparam+cl"] = images_per_second(fused, x.contiguous(memory_format=torch.channels_last), iters)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="smallest",
                        help="comma-separated names, 'all', or 'smallest' (one per family; default)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", default="256x128", help="HEIGHTxWIDTH")
    parser.add_argument("--iters", type=int, default=2, help="timed batches per variant (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.models == "all":
        names = list_models()
    elif args.models == "smallest":
        names = [list_models(f)[0] for f in FAMILIES]
    else:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = [n for n in names if n not in ZOO]
        if unknown:
            parser.error(f"unknown models {unknown}; see `cion zoo list`")
    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.img_size.lower().split("x"))
    columns = ["eager", "channels_last", "reparam", "reparam+cl"]
    print(f"# CPU images/s, batch {args.batch}, {size[0]}x{size[1]}, eval, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.iters} after 1 warm-up", flush=True)
    print("| model | params (M) | " + " | ".join(columns) + " |")
    print("|---|---:|" + "---:|" * len(columns), flush=True)
    results = {}
    for name in names:
        row = bench_model(name, args.batch, size, args.iters)
        results[name] = row
        cells = [f"{row[c]:.1f}" if c in row else "-" for c in columns]
        print(f"| {name} | {ZOO[name].official_params / 1e6:.1f} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"batch": args.batch, "img_size": size, "iters": args.iters,
                                         "threads": torch.get_num_threads(), "images_per_s": results}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
