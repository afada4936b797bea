"""The one prepared GPU check of cion: every throughput figure of docs/gpu.md in one table.

    benchmarks/gpu_check.sh [--out DIR]        # on a GPU machine, unchanged, under 8 minutes
    benchmarks/gpu_check.sh --cpu-smoke        # anywhere, in seconds: tiny sizes, same code

Rows (images/s unless said otherwise):

* pre-training, for resnet50_ibn (per-GPU batch 120) and vit_small (64) at the paper's sizes
  (2 x 256x128 + 8 x 128x64, bf16, channels_last for CNNs, out_dim 65536): the training loop
  fed by the real DataLoader (uint8 crops from W workers over synthetic JPEGs, per-pixel half
  on the GPU), beside the same step on pre-made tensors (the model-bound ceiling), the loader
  alone, the loss's share of a step and the host syncs one step makes (CUDA sync debug mode);
* fine-tuning: the rows of :data:`FINETUNE_ROWS` (supervised BNNeck 256x128 with `cion finetune`'s
  trainer, and MGN 384x128);
* feature extraction (``cion.extract.extract_features`` from JPEG files, fp16);
* evaluation at MSMT17 size (11,659 queries x 82,161 gallery) with distances on the GPU.

A row that fails prints FAILED with the error and the script exits 1 after the table (the
other rows still run: GPU time is scarce). ``--out DIR`` also writes ``gpu_check.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass
class Profile:
    """Sizes of one mode. ``pretrain``: (arch, per-GPU batch); sizes are (height, width)."""
    device: str
    precision: str
    source_size: tuple = (384, 192)            # synthetic JPEGs (1.5x the global crop)
    global_size: tuple = (256, 128)
    local_size: tuple = (128, 64)
    local_crops: int = 8
    pretrain: list = field(default_factory=lambda: [("resnet50_ibn", 120), ("vit_small", 64)])
    head: tuple = (65536, 2048, 256)          # out_dim, hidden_dim, bottleneck_dim
    identities: int = 240                     # distinct JPEGs = identities x 4
    warm_steps: int = 5
    steps: int = 20
    workers: int = 0                          # 0: all cores but two, at most 14
    finetune_arch: str = "resnet50_ibn"
    finetune_batch: int = 64
    finetune_steps: int = 20                  # measured after as many warm-up steps
    finetune_shrink: int = 1                  # FINETUNE_ROWS' sizes are divided by this
    extract_arch: str = "resnet50_ibn"
    extract_images: int = 8192
    extract_batch: int = 256
    eval_size: tuple = (11659, 82161, 3060, 15)   # queries, gallery, identities, cameras (MSMT17)
    eval_dim: int = 2048
    budget_s: float = 450.0                   # later rows are skipped past this


PROFILES = {
    "gpu": Profile(device="cuda", precision="bf16"),
    "cpu-smoke": Profile(device="cpu", precision="fp32", source_size=(96, 48), global_size=(64, 32),
                         local_size=(32, 16), local_crops=2,
                         pretrain=[("resnet_micro", 8), ("vit_micro", 8)], head=(256, 64, 32),
                         identities=12, warm_steps=1, steps=2, workers=1,
                         finetune_arch="resnet_micro", finetune_batch=8, finetune_steps=2,
                         finetune_shrink=4,
                         extract_arch="resnet_micro", extract_images=64, extract_batch=16,
                         eval_size=(60, 300, 20, 3), eval_dim=32, budget_s=300.0),
}


def sig(v: float, digits: int = 4) -> float:
    """``v`` to ``digits`` significant figures (a tiny smoke-run time stays above zero)."""
    return float(f"{v:.{digits}g}")


class Clock:
    def __init__(self, device: str):
        import torch
        self.cuda = device == "cuda"
        self.torch = torch

    def __call__(self) -> float:
        if self.cuda:
            self.torch.cuda.synchronize()
        return time.perf_counter()


def n_workers(p: Profile) -> int:
    return p.workers or max(1, min((os.cpu_count() or 2) - 2, 14))


# ---- data ----------------------------------------------------------------------------------------
def make_data(p: Profile, root: Path):
    """Synthetic person JPEGs (identities x 4) and a pre-training manifest that cycles them."""
    import pandas as pd

    from cion.data.manifest import new_manifest
    from cion.pretrain.toydata import make_toy_manifest

    files = make_toy_manifest(root, identities=p.identities, images_per_identity=4,
                              size=p.source_size, fmt="jpg")
    reps = 4                                   # more rows than files: several batches per epoch
    paths = list(files["path"]) * reps
    ident = [i for r in range(reps) for i in (files["identity"] + r * p.identities)]
    manifest = new_manifest(path=paths, video=[f"v{i % 8}" for i in ident], tracklet=ident,
                            identity=ident)
    manifest.attrs["root"] = str(root.resolve())
    finetune = pd.DataFrame({"path": [str(root / x) for x in files["path"]],
                             "identity": files["identity"].to_numpy()})
    return manifest, finetune


# ---- pre-training ------------------------------------------------------------------------------
def bench_pretrain(p: Profile, arch: str, batch: int, manifest, out: Path) -> dict:
    import torch

    from cion.data.transforms import finish_views
    from cion.pretrain.config import PretrainConfig
    from cion.training.schedules import schedule_values
    from cion.pretrain.trainer import restore, setup_run, training_step

    out_dim, hidden, bottleneck = p.head
    cfg = PretrainConfig(arch=arch, batch_size=batch, local_crops=p.local_crops,
                         global_size=p.global_size, local_size=p.local_size, out_dim=out_dim,
                         hidden_dim=hidden, bottleneck_dim=bottleneck, precision=p.precision,
                         device=p.device, num_workers=n_workers(p), curriculum=[[0, 2]],
                         epochs=1000, tensorboard=False)
    run = setup_run(manifest, cfg, out, log=lambda msg: None)
    restore(run, None)
    run.student.train()
    run.teacher.train()
    sched = schedule_values(cfg, 1.0)
    clock = Clock(p.device)
    dev = run.device

    def batches():
        epoch = 0
        while True:
            run.sampler.set_position(epoch, 0)
            yield from run.loader
            epoch += 1

    def finished(b):
        g, l, gp, lp, ids = b
        return (finish_views(run.augment.photometric, g, gp, run.augment_device, dev)
                + finish_views(run.augment.photometric, l, lp, run.augment_device, dev)), ids

    def step(views, ids):
        training_step(run.student, run.student_ddp, run.teacher, run.loss_fn, run.optimizer,
                      run.scaler, views, ids, sched, cfg.clip_grad, False, run.autocast)

    it = batches()
    for _ in range(p.warm_steps):
        step(*finished(next(it)))
    t = clock()
    for _ in range(p.steps):
        step(*finished(next(it)))
    real = p.steps * batch / (clock() - t)

    views, ids = finished(next(it))
    for _ in range(p.warm_steps):
        step(views, ids)
    t = clock()
    for _ in range(p.steps):
        step(views, ids)
    step_s = (clock() - t) / p.steps

    syncs = None
    if dev.type == "cuda":                    # host round-trips of one real step
        b = next(it)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step(*finished(b))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)

    # the loss alone (forward + backward) on head outputs of the same shapes
    n_views = 2 + p.local_crops
    s_out = torch.randn(batch * n_views, out_dim, device=dev, requires_grad=True)
    t_out = torch.randn(batch * 2, out_dim, device=dev)
    run.loss_fn(s_out, t_out, ids, 0.04)[0].backward()
    t = clock()
    for _ in range(p.steps):
        run.loss_fn(s_out, t_out, ids, 0.04)[0].backward()
    loss_s = (clock() - t) / p.steps

    w = n_workers(p)                          # the loader alone, past its prefetched batches
    for _ in range(2 * w * 2):
        next(it)
    t = time.perf_counter()
    n = max(3 * w, p.steps)
    for _ in range(n):
        next(it)
    loader = n * batch / (time.perf_counter() - t)
    del run
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {"real loader": real, "pre-made tensors": batch / step_s, "loader alone": loader,
            "workers": w, "loss share": loss_s / step_s, "syncs per step": syncs}


# ---- fine-tuning ---------------------------------------------------------------------------------
def finetune_rate(mode: str, p: Profile, arch: str, size: tuple, data) -> float:
    """images/s of ``cion finetune --mode MODE`` (the real trainer: DataLoader, AMP, channels_last
    as configured), from its ``metrics.jsonl``: the second log interval (the first
    ``finetune_steps`` steps are the warm-up)."""
    import json
    import tempfile

    import pandas as pd

    from cion.finetune.config import MODE_DEFAULTS, FinetuneConfig
    from cion.finetune.trainer import finetune

    k = p.finetune_steps
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "train.parquet"
        few = data.iloc[:8]                  # the table reader wants all three splits
        pd.concat([data.assign(split="train", camera=0), few.assign(split="query", camera=0),
                   few.assign(split="gallery", camera=1)]).to_parquet(table)
        cfg = FinetuneConfig.from_dict(dict(
            MODE_DEFAULTS[mode], mode=mode, arch=arch, img_size=list(size), steps=2 * k,
            log_every=k, batch_size=p.finetune_batch, instances=4, warmup_epochs=0.0,
            freeze_epochs=0, device=p.device, num_workers=n_workers(p)), "gpu_check")
        finetune(cfg, table, Path(tmp) / "run", dataset="table", evaluate=False, progress=False,
                 log=lambda msg: None)
        lines = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        rates = [r["images_per_s"] for r in lines if "images_per_s" in r]
    return rates[1] if len(rates) > 1 else rates[-1]


#: Fine-tuning rows: (name, image size (H, W), function(profile, arch, size, data) -> images/s).
FINETUNE_ROWS = [
    ("supervised BNNeck", (256, 128), lambda *a: finetune_rate("supervised", *a)),
    ("MGN", (384, 128), lambda *a: finetune_rate("mgn", *a)),
]


# ---- extraction and evaluation ---------------------------------------------------------------------
def extract_rate(p: Profile, data) -> float:
    from cion.extract import FeatureModel, extract_features
    from cion.models.backbone import build_backbone, feature_width

    size = p.global_size
    net = build_backbone(p.extract_arch, size).eval()
    model = FeatureModel(p.extract_arch, net, size, feature_width(net, size))
    files = list(data["path"])
    paths = (files * (p.extract_images // len(files) + 1))[:p.extract_images]
    extract_features(paths[:p.extract_batch], model, batch_size=p.extract_batch,
                     device=p.device, workers=0, progress=False)        # warm-up (cudnn, memory)
    t = time.perf_counter()
    extract_features(paths, model, batch_size=p.extract_batch, device=p.device,
                     workers=n_workers(p), progress=False)
    return len(paths) / (time.perf_counter() - t)


def evaluate_seconds(p: Profile) -> tuple[float, float]:
    """Seconds to evaluate synthetic features at ``eval_size`` (cosine distances, ranking and
    mAP on the device); returns (seconds, mAP) (mAP only as a sanity check)."""
    import numpy as np
    import torch

    from cion.evaluation.rank import evaluate_features

    nq, ng, ids, cams = p.eval_size
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(0, ids, nq), rng.integers(0, ids, ng)
    q_cams, g_cams = rng.integers(0, cams, nq), rng.integers(0, cams, ng)
    gen = torch.Generator(device=p.device).manual_seed(0)
    centres = torch.randn(ids, p.eval_dim, device=p.device, generator=gen)
    qf = centres[torch.from_numpy(q_pids).to(p.device)] + 1.5 * torch.randn(
        nq, p.eval_dim, device=p.device, generator=gen)
    gf = centres[torch.from_numpy(g_pids).to(p.device)] + 1.5 * torch.randn(
        ng, p.eval_dim, device=p.device, generator=gen)
    clock = Clock(p.device)
    t = clock()
    res = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric="cosine",
                            device=p.device)
    return clock() - t, float(res["mAP"])


# ---- the table -----------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (seconds)")
    ap.add_argument("--out", default=None, help="folder for gpu_check.json")
    args = ap.parse_args(argv)
    p = PROFILES["cpu-smoke" if args.cpu_smoke else "gpu"]

    import torch

    if p.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible. Fix: run it on a GPU machine, or add --cpu-smoke",
              file=sys.stderr)
        return 2
    if args.out:
        from cion.errors import CionError
        from cion.fileio import ensure_writable_dir
        try:
            ensure_writable_dir(args.out, option="--out")
        except CionError as err:
            print(f"gpu_check: {err}", file=sys.stderr)
            return 2
    if p.device == "cuda":
        torch.backends.cudnn.benchmark = True
        where = f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    else:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        where = "CPU (--cpu-smoke: tiny sizes, figures mean nothing)"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"gpu_check on {where}; torch {torch.__version__}; {os.cpu_count()} CPU cores, "
          f"load {load:.1f}; {n_workers(p)} loader workers", flush=True)

    rows: list[dict] = []
    failed = []
    start = time.perf_counter()

    def row(section: str, what: str, fn, fmt):
        """Run ``fn`` for one or more table rows, catching any failure."""
        if time.perf_counter() - start > p.budget_s:
            rows.append({"section": section, "what": what, "value": "skipped (time budget)"})
            return
        t = time.perf_counter()
        try:
            for w, v in fmt(fn()):
                rows.append({"section": section, "what": w, "value": v})
        except Exception as err:  # noqa: BLE001  (keep measuring the other rows)
            failed.append(what)
            rows.append({"section": section, "what": what,
                         "value": f"FAILED: {type(err).__name__}: {err}".splitlines()[0][:200]})
            traceback.print_exc()
        print(f"  {section} / {what}: {time.perf_counter() - t:.1f} s", flush=True)

    gs, ls = p.global_size, p.local_size
    sizes = f"2x{gs[0]}x{gs[1]} + {p.local_crops}x{ls[0]}x{ls[1]}, {p.precision}"
    with tempfile.TemporaryDirectory(prefix="cion_gpu_check_") as tmp:
        tmp = Path(tmp)
        manifest, finetune_data = make_data(p, tmp / "data")
        for arch, batch in p.pretrain:
            def fmt(r, arch=arch, batch=batch):
                head = f"{arch}, batch {batch}, {sizes}"
                return [(f"{head}: real DataLoader ({r['workers']} workers)", sig(r["real loader"])),
                        (f"{head}: pre-made tensors (model-bound)", sig(r["pre-made tensors"])),
                        (f"{head}: DataLoader alone", sig(r["loader alone"])),
                        (f"{head}: loss share of a step (%)", sig(100 * r["loss share"])),
                        (f"{head}: host syncs in one step", "n/a (CPU)" if r["syncs per step"] is None
                         else r["syncs per step"])]
            row("pre-training images/s", arch,
                lambda arch=arch, batch=batch: bench_pretrain(p, arch, batch, manifest, tmp / arch), fmt)
        for name, size, fn in FINETUNE_ROWS:
            size = (size[0] // p.finetune_shrink, size[1] // p.finetune_shrink)
            what = f"{name} {size[0]}x{size[1]}, {p.finetune_arch}, batch {p.finetune_batch}"
            if fn is None:
                rows.append({"section": "fine-tuning images/s", "what": what,
                             "value": "slot: set its function in FINETUNE_ROWS (gpu_check.py)"})
                continue
            row("fine-tuning images/s", what,
                lambda fn=fn, size=size: fn(p, p.finetune_arch, size, finetune_data),
                lambda v, what=what: [(what, sig(v))])
        amp = "fp16" if p.device == "cuda" else "fp32"
        what = f"{p.extract_arch} {gs[0]}x{gs[1]} from JPEGs, batch {p.extract_batch}, {amp}"
        row("feature extraction images/s", what, lambda: extract_rate(p, finetune_data),
            lambda v, what=what: [(what, sig(v))])
    nq, ng = p.eval_size[:2]
    what = f"{nq:,} x {ng:,}, D {p.eval_dim}, cosine, on {p.device}"
    row("evaluation", what, lambda: evaluate_seconds(p),
        lambda v, what=what: [(f"{what}: seconds", sig(v[0])), (f"{what}: mAP (sanity)", sig(v[1]))])

    print(f"\n| section | what | value |\n|---|---|---|")
    for r in rows:
        print(f"| {r['section']} | {r['what']} | {r['value']} |")
    total = time.perf_counter() - start
    print(f"\ntotal {total:.0f} s on {where}")
    if args.out:
        from cion.fileio import atomic_write
        report = {"device": where, "torch": torch.__version__, "cpu_cores": os.cpu_count(),
                  "load": load, "seconds": total, "rows": rows, "failed": failed}
        atomic_write(Path(args.out) / "gpu_check.json",
                     lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
    if failed:
        print(f"FAILED rows: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
