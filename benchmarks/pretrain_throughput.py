"""Pre-training throughput: augmentation images/s per core (the worker half, both halves per
image, torchvision-PIL DINO, and the batched per-pixel half; same run), training images/s (each image = 2 global + L local crops) and the share of step time spent
in the loss, on CPU; on a GPU (when present) bf16 images/s for resnet50_ibn.

    .venv/bin/python benchmarks/pretrain_throughput.py [--archs resnet50_ibn,vit_small]
        [--batch 4] [--local-crops 8] [--steps 2] [--aug-images 40] [--aug-rounds 3] [--quick]

``--quick`` uses 128x64 / 64x32 crops and 2 local crops (a fast smoke run). Timings on a shared
machine are disturbed by other processes; the two augmentation pipelines are measured
interleaved in the same run so their ratio is robust.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _jpegs(n: int, size=(384, 192), seed=0):
    """n in-memory JPEG person-like images of (H, W) ``size`` (decoded from bytes each time)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 255, (size[0] // 8, size[1] // 8, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((size[1], size[0]), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def bench_augment(n_images: int, gsize, lsize, local_crops: int, rounds: int = 3,
                  batch_threads: int = 2) -> dict:
    """images/s of the augmentation pipelines on the same JPEGs, interleaved (same load).

    ``worker half``: decode + crop/resize/flip + parameter draws (uint8 out), what a DataLoader
    worker does now; ``both halves per image``: that plus the per-pixel half on the CPU for one
    image (same views as the former code); ``former``: the code before the split (frozen copy
    in tests/multicrop_reference.py); ``torchvision``: DINO's PIL pipeline;
    ``per-pixel batched``: the per-pixel half alone over all views of ``n_images`` images at
    once on the CPU, with 1 and ``batch_threads`` threads.
    """
    import torch
    from PIL import Image

    from cion.data.transforms import (MultiCropAugment, MultiCropConfig, finish_views,
                                      torchvision_multicrop)

    torch.set_num_threads(1)
    cfg = MultiCropConfig(global_size=gsize, local_size=lsize, local_crops=local_crops)
    ours, ref = MultiCropAugment(cfg), torchvision_multicrop(cfg)
    data = _jpegs(n_images, (int(gsize[0] * 1.5), int(gsize[1] * 1.5)))

    def decode(b):
        img = Image.open(io.BytesIO(b))
        img.draft("RGB", (2 * gsize[1], 2 * gsize[0]))
        return img.convert("RGB")

    def run_worker():
        return [ours.crops(decode(b), i) for i, b in enumerate(data)]

    def run_both():
        for i, b in enumerate(data):
            ours(decode(b), i)

    def run_ref():
        for b in data:
            ref(Image.open(io.BytesIO(b)).convert("RGB"))

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from multicrop_reference import ReferenceMultiCropAugment   # the code before the split

    former = ReferenceMultiCropAugment(cfg)

    def run_former():
        for i, b in enumerate(data):
            former(decode(b), i)

    made = run_worker()
    batch = [torch.stack([getattr(v, f) for v in made]) for f in made[0]._fields]
    cpu = torch.device("cpu")

    def per_pixel(threads):
        def run():
            torch.set_num_threads(threads)
            finish_views(ours.photometric, batch[0], batch[2], cpu)
            finish_views(ours.photometric, batch[1], batch[3], cpu)
            torch.set_num_threads(1)
        return run

    import numpy as np

    from cion.data.transforms import random_resized_boxes

    decoded = [decode(b) for b in data]
    boxes = []
    for i, img in enumerate(decoded):     # the boxes a worker would draw (sizes as in crops())
        rng = np.random.default_rng(i)
        boxes.append([(gsize, random_resized_boxes(rng, 2, *img.size, cfg.global_scale, cfg.ratio)),
                      (lsize, random_resized_boxes(rng, local_crops, *img.size, cfg.local_scale,
                                                   cfg.ratio))])

    def run_decode():
        for b in data:
            decode(b)

    def run_resize():
        for img, groups in zip(decoded, boxes):
            for (h, w), bx in groups:
                for box in bx.tolist():
                    img.resize((w, h), Image.BILINEAR, box=tuple(box))

    fns = {"worker half": run_worker, "- of which JPEG decode": run_decode,
           "- of which PIL crop + resize (10 calls)": run_resize, "both halves per image": run_both,
           "former per-image code (6c7065c)": run_former, "torchvision": run_ref,
           "per-pixel batched, 1 thread": per_pixel(1),
           f"per-pixel batched, {batch_threads} threads": per_pixel(batch_threads)}
    wall = {k: [] for k in fns}
    cpu_s = {k: [] for k in fns}
    for fn in fns.values():                   # warm-up
        fn()
    for _ in range(rounds):                   # interleaved: all see the same machine load
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t)
            cpu_s[name].append(time.process_time() - c)
    # per core: images per second of this process's CPU time (robust to other jobs taking
    # the core meanwhile); wall: images per elapsed second (the multi-threaded row's figure)
    return {k: (n_images / min(cpu_s[k]), n_images / min(wall[k])) for k in fns}


def bench_train(arch: str, batch: int, gsize, lsize, local_crops: int, steps: int, device: str,
                precision: str = "fp32", out_dim: int = 65536) -> dict:
    import torch

    from cion.models.backbone import build_backbone, feature_width
    from cion.pretrain.head import DINOHead, MultiCropNet
    from cion.pretrain.loss import IdentityDINOLoss
    from cion.pretrain.trainer import param_groups, training_step

    dev = torch.device(device)
    backbone = build_backbone(arch, gsize)
    cnn = device == "cuda" and any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    student = MultiCropNet(backbone, DINOHead(feature_width(backbone, gsize), out_dim),
                           channels_last=cnn).to(dev)
    import copy
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    if cnn:
        student, teacher = (m.to(memory_format=torch.channels_last) for m in (student, teacher))
    loss_fn = IdentityDINOLoss(out_dim).to(dev)
    opt = torch.optim.AdamW(param_groups(student), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
                if precision != "fp32" else contextlib.nullcontext())
    views = ([torch.randn(batch, 3, *gsize, device=dev) for _ in range(2)]
             + [torch.randn(batch, 3, *lsize, device=dev) for _ in range(local_crops)])
    ids = torch.arange(batch, device=dev) // 2
    sched = {"teacher_temp": 0.04, "momentum": 0.996}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    training_step(student, student, teacher, loss_fn, opt, scaler, views, ids, sched, 3.0, False, autocast)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        training_step(student, student, teacher, loss_fn, opt, scaler, views, ids, sched, 3.0, False, autocast)
    sync()
    step_s = (time.perf_counter() - t) / steps
    # the loss alone (forward + backward) on outputs of the same shapes
    s_out = torch.randn(batch * (2 + local_crops), out_dim, device=dev, requires_grad=True)
    t_out = torch.randn(batch * 2, out_dim, device=dev)
    loss_fn(s_out, t_out, ids, 0.04)[0].backward()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        loss_fn(s_out, t_out, ids, 0.04)[0].backward()
    sync()
    loss_s = (time.perf_counter() - t) / steps
    return {"arch": arch, "device": device, "precision": precision, "batch": batch,
            "images_per_s": batch / step_s, "step_s": step_s, "loss_share": loss_s / step_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet50_ibn,vit_small")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--local-crops", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--aug-images", type=int, default=40)
    ap.add_argument("--aug-rounds", type=int, default=3, help="timed rounds (the best counts)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gpu-batch", type=int, default=128)
    args = ap.parse_args()
    gsize, lsize, L = ((128, 64), (64, 32), 2) if args.quick else ((256, 128), (128, 64), args.local_crops)

    import torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} default threads")
    print(f"\n## augmentation, 1 thread, 2 x {gsize[0]}x{gsize[1]} + {L} x {lsize[0]}x{lsize[1]} "
          f"from {int(gsize[0] * 1.5)}x{int(gsize[1] * 1.5)} JPEGs")
    aug = bench_augment(args.aug_images, gsize, lsize, L, rounds=args.aug_rounds,
                        batch_threads=args.threads)
    base = aug["former per-image code (6c7065c)"][0]
    print("| pipeline | images/s per core (CPU time) | images/s (wall) | per core vs the former "
          "per-image code |\n|---|---|---|---|")
    for name, (per_core, per_wall) in aug.items():
        print(f"| {name} | {per_core:.1f} | {per_wall:.1f} | {per_core / base:.2f}x |")
    print(f"(worker half = what a DataLoader worker does now; a node with C loader cores feeds "
          f"~{aug['worker half'][0]:.0f} x C images/s; the per-pixel half runs on the GPU)")

    torch.set_num_threads(args.threads)
    print(f"\n## training step on CPU ({args.threads} threads, fp32, out_dim 65536, batch {args.batch}, "
          f"2 x {gsize[0]}x{gsize[1]} + {L} x {lsize[0]}x{lsize[1]}, synthetic tensors, no data loading)")
    print("| arch | images/s | s/step | loss share of step |\n|---|---|---|---|")
    for arch in [a for a in args.archs.split(",") if a]:
        r = bench_train(arch, args.batch, gsize, lsize, L, args.steps, "cpu")
        print(f"| {arch} | {r['images_per_s']:.2f} | {r['step_s']:.2f} | {100 * r['loss_share']:.2f}% |",
              flush=True)
    if torch.cuda.is_available():
        r = bench_train("resnet50_ibn", args.gpu_batch, (256, 128), (128, 64), 8, 10, "cuda", "bf16")
        print(f"\n## GPU {torch.cuda.get_device_name()}: resnet50_ibn bf16, 2x256x128 + 8x128x64, "
              f"batch {args.gpu_batch}: {r['images_per_s']:.0f} images/s, loss share "
              f"{100 * r['loss_share']:.2f}% (target >= 900 images/s on an H100)")
    else:
        print("\n## GPU: none visible, GPU throughput not measured")


if __name__ == "__main__":
    main()
