"""The fine-tuning trainer: one loop for the four modes (supervised BNNeck, MGN, Cluster
Contrast USL / UDA; paper Sec. 4.1), read like the pre-training loop.

Per epoch: (Cluster Contrast) re-cluster the training images and reset the memory; then per
step: learning rate from the schedule at ``epoch + step / steps``, forward under autocast, the
mode's loss, backward (scaled for fp16), gradients unscaled before clipping, optimiser and
scaler step, memory update (all-gathered batch), log, checkpoint. Every ``eval_every`` epochs
(and at the end): mAP / rank-1 / mINP on query vs gallery with :mod:`cion.evaluation`, and the
best network so far in ``best.safetensors``.

    from cion.finetune import FinetuneConfig, finetune
    cfg = FinetuneConfig.load("configs/finetune/usl_market1501.yaml", arch="resnet50_ibn")
    report = finetune(cfg, "data/market1501", "runs/usl", checkpoint="cion_r50ibn.safetensors")

Run it under ``torchrun --nproc_per_node N`` unchanged (gloo on CPU, nccl on GPU). Calling it
again with the same ``out`` resumes from ``out/checkpoint.pt`` exactly: a run killed at any
moment ends with the weights of an uninterrupted one (sampler position, RNG states, optimiser,
scaler, pseudo-labels and cluster memory are restored; schedules are functions of the position;
every image's augmentation is a function of its own seed).

An unreadable training image (corrupt, truncated, empty or missing; :mod:`cion.data.images`)
never stops a run: supervised / MGN replace it by another image of the same identity (the batch
keeps its shape, a resumed run draws what the uninterrupted one drew); Cluster Contrast makes it
an outlier of every epoch in which it cannot be read. Each is listed once in
``out/bad_images.txt``; past ``max_bad_share`` of the training images the run stops with one
line. An unreadable query / gallery image stops the evaluation with one line naming it.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from cion import distributed as dist
from cion.errors import CionError
from cion.finetune.checkpoint import (load_state, rng_state, save_backbone, save_model,
                                      save_state, set_rng_state)
from cion.finetune.config import FinetuneConfig
from cion.finetune.data import TrainImages, extract, preload
from cion.finetune.objectives import build_objective, reduce_stats
from cion.finetune.transforms import TrainAugment
from cion.training.collectives import average_buffers, sync_batchnorm
from cion.training.logging import MetricsLog, progress_bar
from cion.training.precision import resolve_precision
from cion.training.schedules import warmup_hold_cosine, warmup_step_decay

REPORT = "finetune.json"


# ---- inputs ------------------------------------------------------------------------------------
def check_arch(arch: str) -> None:
    """A registered model (one of the 32, a micro model or an old alias); else a one-line error
    naming close names."""
    from cion.models.registry import get_entry

    try:
        get_entry(arch)
    except CionError as err:
        raise CionError(f"--arch: {err}") from None


def check_mode(cfg: FinetuneConfig, checkpoint, source_checkpoint) -> None:
    if cfg.mode == "mgn":
        from cion.finetune.mgn import mgn_archs, mgn_supported

        if not mgn_supported(cfg.arch):
            names = ", ".join(mgn_archs())
            raise CionError(f"--mode mgn does not fit --arch {cfg.arch}: MGN splits a ResNet's "
                            f"layer3 / layer4 into branches. Fix: use one of {names}, or "
                            "--mode supervised for this arch")
    if cfg.mode == "uda" and source_checkpoint is None:
        raise CionError("--mode uda needs --source-checkpoint: the backbone fine-tuned with "
                        "labels on the source dataset (the backbone.safetensors of a "
                        "`cion finetune --mode supervised` run). Fix: pass it, or use --mode usl")
    if cfg.mode == "uda" and checkpoint is not None:
        raise CionError("--mode uda starts from --source-checkpoint; --checkpoint is not used. "
                        "Fix: drop --checkpoint")
    if cfg.mode != "uda" and source_checkpoint is not None:
        raise CionError(f"--source-checkpoint is for --mode uda, not {cfg.mode}. Fix: pass the "
                        "initial weights as --checkpoint")
    for option, path in (("--checkpoint", checkpoint), ("--source-checkpoint", source_checkpoint)):
        if path is not None and not Path(path).is_file():
            raise CionError(f"{option} {path} does not exist"
                            f"{' (it is a directory)' if Path(path).is_dir() else ''}. Fix: pass "
                            "a backbone.safetensors (pre-training or fine-tuning run) or, for a "
                            "ReIDZoo arch, the authors' .pth")


_MARKET_NAMES = ("Market-1501",)


def training_rows(ds, cfg: FinetuneConfig):
    """(paths, labels (N,), cameras (N,), identities (C,)) of the train split.

    Supervised modes: rows with identity >= 0 (>= 1 for Market-1501: -1 junk and 0 distractors
    are not classes), labels 0..C-1; at least 2 identities. Cluster modes: every train image,
    labels all -1 (the identities are not used).
    """
    from cion.data.manifest import resolve_paths

    train = ds.train
    if train is None or len(train) == 0:
        raise CionError(f"{ds.root}: the {ds.name} dataset has no training split. Fix: add it "
                        "(folder: train/<identity>/<image>; table: rows with split == 'train')")
    cams = train["camera"].to_numpy(np.int64) if "camera" in train else np.full(len(train), -1)
    if cfg.cluster:
        if len(train) < max(cfg.k1, cfg.min_samples):
            raise CionError(f"{ds.root}: {len(train)} training images; Cluster Contrast's "
                            f"k-reciprocal neighbours need at least k1 = {cfg.k1}. Fix: more "
                            "images, or --set k1=N with N <= the number of images")
        return resolve_paths(train), np.full(len(train), -1, np.int64), cams, np.zeros(0, np.int64)
    lowest = 1 if ds.name in _MARKET_NAMES else 0
    ident = train["identity"].to_numpy(np.int64)
    keep = ident >= lowest
    uniq, labels = np.unique(ident[keep], return_inverse=True)
    if len(uniq) < 2:
        raise CionError(f"{ds.root}: the {ds.name} train split has {len(uniq)} identit"
                        f"{'y' if len(uniq) == 1 else 'ies'} (identity >= {lowest}); the ID and "
                        "triplet losses need at least 2. Fix: a train split with more people, or "
                        "--mode usl (no labels needed)")
    sub = train[keep]
    sub.attrs.update(train.attrs)
    return resolve_paths(sub), labels.astype(np.int64), cams[keep], uniq


def learning_rate(cfg: FinetuneConfig, progress: float) -> float:
    """The recipe's learning rate at ``progress`` epochs."""
    if cfg.schedule == "step":
        return warmup_step_decay(progress, cfg.lr, cfg.step_size, cfg.gamma,
                                 cfg.warmup_epochs, cfg.warmup_factor)
    return warmup_hold_cosine(progress, cfg.epochs, cfg.lr, cfg.min_lr, cfg.warmup_epochs,
                              cfg.warmup_factor, cfg.hold_epochs)


def build_optimizer(cfg: FinetuneConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scores_line(s: dict) -> str:
    return f"mAP {100 * s['mAP']:.2f}%  rank-1 {100 * s['rank1']:.2f}%  mINP {100 * s['mINP']:.2f}%"


# ---- the run -----------------------------------------------------------------------------------
def finetune(cfg: FinetuneConfig, data: str | os.PathLike, out: str | os.PathLike, *,
             dataset: str = "market1501", checkpoint: str | os.PathLike | None = None,
             source_checkpoint: str | os.PathLike | None = None, evaluate: bool = True,
             evaluate_start: bool = True, progress: bool = True, callbacks: Iterable[Callable[[dict], None]] = (),
             log: Callable[[str], None] | None = None, max_bad_share: float = 0.01) -> dict:
    """Fine-tune ``cfg.arch`` in ``cfg.mode`` on the train split of ``data``; resume if
    ``out/checkpoint.pt`` exists.

    Args:
        cfg: the recipe (:class:`FinetuneConfig`).
        data: dataset folder or table (:func:`cion.data.readers.read_dataset`).
        out: run directory: checkpoint.pt, backbone.safetensors, model.safetensors,
            best.safetensors, metrics.jsonl, tensorboard/, config.json, finetune.json.
        dataset: market1501 | msmt17 | folder | table.
        checkpoint: initial backbone (default random, seeded); not for ``uda``.
        source_checkpoint: ``uda`` only: the backbone fine-tuned on the source set.
        evaluate: score query vs gallery at the start, every ``cfg.eval_every`` epochs and at
            the end.
        evaluate_start: with ``evaluate``, also score the initial network.
        progress: rich progress bar on rank 0.
        callbacks: called after every optimiser step with ``{"step", "epoch", "loss"}``.
        log: one-line messages (default: a rich console on rank 0).
        max_bad_share: unreadable training images are replaced (supervised / MGN) or made
            outliers (Cluster Contrast) and listed in ``out/bad_images.txt``; past this share of
            the training images the run stops (one line).

    Returns the content of ``finetune.json``: mode, arch, dataset, config, steps, epochs,
    ``scores`` (``start``, ``end``, ``best``: {mAP, rank1, mINP} fractions; ``history``: one
    entry per evaluation), cluster statistics per epoch (cluster modes), seconds, and the paths
    of the written files, and ``bad_images`` (count and list file).
    """
    from cion.data.images import BadImageTally, ReplaceBadImages
    from cion.data.readers import read_dataset
    from cion.fileio import atomic_write, ensure_writable_dir
    from cion.models.backbone import build_backbone, is_cnn, load_backbone

    t_start = time.perf_counter()
    cfg = cfg.check()
    out = Path(out)
    check_arch(cfg.arch)
    check_mode(cfg, checkpoint, source_checkpoint)
    try:
        ds = read_dataset(dataset, data)
    except CionError as err:      # the readers' hints name `cion evaluate`'s --root; ours is --data
        raise CionError(str(err).replace("--root ", "--data ")) from None
    paths, labels, cams, identities = training_rows(ds, cfg)
    BadImageTally(len(paths), None, max_share=max_bad_share)      # a bad share fails here
    ensure_writable_dir(out)

    info = dist.init(None if cfg.device == "auto" else cfg.device)
    device = info.device
    if log is None:
        from rich.console import Console
        console = Console(stderr=True)
        log = ((lambda msg: console.print(f"[finetune] {msg}", highlight=False, markup=False))
               if info.is_main else (lambda msg: None))
    precision = resolve_precision(cfg.precision, device, fix="--set precision=bf16 or fp32 on CPU")
    if cfg.batch_size % info.world_size or (cfg.batch_size // info.world_size) % cfg.instances:
        raise CionError(f"batch_size {cfg.batch_size} does not split into {info.world_size} "
                        f"processes of whole groups of instances = {cfg.instances}. Fix: a "
                        f"batch size that is a multiple of {info.world_size * cfg.instances}")
    ckpt_path = out / "checkpoint.pt"
    state = load_state(ckpt_path) if ckpt_path.exists() else None
    if state is not None:
        saved = FinetuneConfig.from_dict(state["config"], str(ckpt_path))
        diff = cfg.differences(saved)
        if diff:
            changes = ", ".join(f"{k}: {getattr(saved, k)!r} -> {getattr(cfg, k)!r}" for k in diff)
            raise CionError(f"{ckpt_path}: this run directory was started with different options "
                            f"({changes}). Fix: repeat the original options to resume, or use a "
                            "new --out")
    for line in ds.describe().splitlines():
        log(line)
    # unreadable training images: one list per run, shared by workers and ranks (a resumed run
    # continues it)
    tally = BadImageTally(len(paths), out / "bad_images.txt", max_share=max_bad_share,
                          what="finetune", fresh=state is None and info.is_main)
    dist.barrier()                                   # no rank lists an image before rank 0 reset it

    def note_bad(rows: dict[int, str]) -> None:
        """List ``rows`` ({row: reason}, the same on every rank); stop past the share."""
        for r, why in sorted(rows.items()):
            tally.add(paths[r], why)
        dist.barrier()
        tally.check()

    # -- network --
    size = tuple(cfg.img_size)
    init = source_checkpoint if cfg.mode == "uda" else checkpoint
    torch.manual_seed(cfg.seed)                        # the same initialisation on every rank
    backbone = (load_backbone(cfg.arch, init, size) if init is not None
                else build_backbone(cfg.arch, size))
    objective = build_objective(cfg, backbone, len(identities))
    model, synced = sync_batchnorm(objective.model, info) if cfg.sync_bn else (objective.model, False)
    objective.model = model
    channels_last = (cfg.channels_last == "true" or
                     (cfg.channels_last == "auto" and device.type == "cuda"
                      and is_cnn(cfg.arch, backbone)))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt)
    if hasattr(objective, "to"):
        objective.to(device)
    if info.world_size > 1 and dist.has_batchnorm(model) and not synced:
        log("BatchNorm statistics are per process (--set sync_bn=true for global-batch BN)")
    if info.world_size > 1 and cfg.mode == "mgn" and cfg.freeze_epochs > 0:
        from torch.nn.parallel import DistributedDataParallel as DDP   # frozen epochs: unused params
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                  broadcast_buffers=False, find_unused_parameters=True)
    else:
        net = dist.wrap_ddp(model, info)
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16"
                               else torch.float16)
                if precision in ("bf16", "fp16") else contextlib.nullcontext())
    log(f"{cfg.mode} fine-tuning of {cfg.arch} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
        f"parameters, {'weights from ' + str(init) if init else 'random init'}) on "
        f"{len(paths)} images{'' if cfg.cluster else f' of {len(identities)} identities'}, "
        f"{info.world_size} process(es) on {device}, {precision}")

    # -- data --
    images, image_errors = preload(paths, size) if cfg.in_memory else (None, {})
    if image_errors:
        note_bad(image_errors)
    augment = TrainAugment(flip_p=cfg.flip_p, pad=cfg.pad, erasing_p=cfg.erasing_p)
    if cfg.cluster:
        from cion.finetune.cluster_sampler import ClusterSampler
        sampler = None          # built at the first clustering (labels are needed)
    else:
        from cion.data.sampler import IdentityBatchSampler
        sampler = IdentityBatchSampler(labels, cfg.batch_size, [[0, cfg.instances]], cfg.seed,
                                       rank=info.rank, world_size=info.world_size)
    train_data = TrainImages(paths, size, augment, images, image_errors)
    if not cfg.cluster:       # an unreadable image -> another of its identity, same seed and label
        train_data = ReplaceBadImages(train_data, labels, cfg.seed, tally, paths)

    def steps_in(epoch: int) -> int:
        if cfg.cluster:
            return cfg.iters_per_epoch or max(1, len(paths) // cfg.batch_size)
        return sampler.steps_in_epoch(epoch)

    def scores() -> dict:
        """mAP / rank-1 / mINP of the mode's test feature on query vs gallery (all ranks extract
        a share; the numbers are the same on every rank)."""
        from cion.data.manifest import resolve_paths
        from cion.evaluation import evaluate_features

        test = objective.test_model()
        if not synced:
            average_buffers(test)
        kw = dict(device=device, workers=cfg.num_workers, autocast=autocast, shard=True,
                  channels_last=channels_last)
        feats, bad = [], []
        for part in ("query", "gallery"):
            part_paths, rows = resolve_paths(getattr(ds, part)), {}
            feats.append(extract(test, part_paths, size, bad=rows, **kw))
            bad += [(part_paths[r], why) for r, why in sorted(rows.items())]
        if bad:       # a query left out would change the metrics: name the files and stop
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise CionError(f"{len(bad)} query / gallery image(s) cannot be read: {bad[0][0]} "
                            f"({bad[0][1]}){more}. Fix: repair or replace them (`cion evaluate "
                            "--skip-bad-images` can score without them), or fine-tune with "
                            "--no-evaluate")
        qf, gf = feats
        r = evaluate_features(qf, gf, ds.query["identity"].to_numpy(), ds.gallery["identity"].to_numpy(),
                              ds.query["camera"].to_numpy(), ds.gallery["camera"].to_numpy(),
                              max_rank=10)
        return {"mAP": float(r["mAP"]), "rank1": float(r["cmc"][0]), "mINP": float(r["mINP"])}

    # -- resume --
    epoch, step_in_epoch, global_step = 0, 0, 0
    evals: list[dict] = []
    clusters: list[dict] = []
    best: dict | None = None
    start_scores = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        objective.load_state_dict(state["objective"])
        epoch, step_in_epoch = int(state["epoch"]), int(state["step"])
        global_step = int(state["global_step"])
        evals, clusters = list(state["evals"]), list(state["clusters"])
        best, start_scores = state["best"], state["start_scores"]
        rngs = state["rng"]
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
        else:
            log(f"checkpoint has RNG states of {len(rngs)} processes, this run has "
                f"{info.world_size}: dropout randomness is not restored exactly")
        log(f"resuming from {ckpt_path}: epoch {epoch + 1}, step {step_in_epoch}, "
            f"{global_step} steps done")
    else:
        torch.manual_seed(cfg.seed + 7919 * (info.rank + 1))   # per-rank stream (dropout)
    metrics = MetricsLog(out, info.is_main, cfg.tensorboard, global_step, prefix="finetune",
                         default_kind="train")

    def write_config() -> None:
        if info.is_main:
            atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(
                dict(cfg.to_dict(), precision_used=precision, world_size=info.world_size,
                     channels_last_used=channels_last, sync_bn_used=synced, dataset=dataset,
                     data=str(data), checkpoint=str(init) if init else None), indent=2)))

    def save(next_epoch: int, next_step: int) -> None:
        if not synced:              # one model on every rank: what rank 0 writes is what all resume
            average_buffers(model)
        rngs = dist.all_gather_object(rng_state())
        if info.is_main:
            save_state({
                "config": cfg.to_dict(), "global_step": global_step,
                "world_size": info.world_size, "epoch": next_epoch, "step": next_step,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "objective": objective.state_dict(),
                "rng": rngs, "evals": evals, "clusters": clusters, "best": best,
                "start_scores": start_scores}, ckpt_path)
        dist.barrier()

    meta = {"arch": cfg.arch, "mode": cfg.mode, "img_size": f"{size[0]}x{size[1]}",
            "dataset": ds.name, "init": str(init) if init else "random"}

    def export(name: str, whole: bool, **extra) -> Path | None:
        path = out / name
        part = model if whole else objective.backbone()
        if part is None:
            return None
        if info.is_main:
            (save_model if whole else save_backbone)(
                part, path,
                dict(meta, step=global_step, **extra,
                     source=f"cion finetune --mode {cfg.mode} ({'whole network' if whole else 'backbone'})"))
        return path

    # -- train --
    t_eval = 0.0
    if evaluate and evaluate_start and start_scores is None:
        t0 = time.perf_counter()
        start_scores = scores()
        t_eval += time.perf_counter() - t0
        log(f"start: {_scores_line(start_scores)}")
    max_steps = min(cfg.max_steps or math.inf, cfg.steps or math.inf)
    stopped = global_step >= max_steps
    bar = progress_bar(progress and info.is_main)
    task = None
    sums: dict = {}
    n_sum, t_last, n_img = 0, time.perf_counter(), 0
    shown_loss = float("nan")
    data_loader = None
    try:
        with (bar if bar is not None else contextlib.nullcontext()):
            while (epoch < cfg.epochs or cfg.steps is not None) and not stopped:
                objective.start_epoch(epoch, resumed=step_in_epoch > 0)
                if cfg.cluster:
                    if step_in_epoch == 0 or objective.labels is None:
                        unreadable: dict[int, str] = {}
                        if not synced:   # every rank embeds its share with the same BN statistics
                            average_buffers(model)
                        feats = extract(model, paths, size, device=device,
                                        workers=cfg.num_workers, images=images,
                                        image_errors=image_errors, autocast=autocast,
                                        shard=True, channels_last=channels_last, bad=unreadable)
                        note_bad(unreadable)
                        stats = cluster_readable(objective, feats, unreadable, cfg, epoch)
                        del feats
                        clusters.append(dict(stats, epoch=epoch))
                        log(f"epoch {epoch + 1}: {stats['clusters']} clusters, "
                            f"{stats['outliers']} of {stats['images']} images outliers")
                    if sampler is None:
                        sampler = ClusterSampler(objective.labels, cfg.batch_size, cfg.instances,
                                                 steps_in(epoch), cams, cfg.seed, info.rank,
                                                 info.world_size)
                    else:
                        sampler.set_labels(objective.labels, cams)
                if global_step == 0 and step_in_epoch == 0:
                    write_config()
                sampler.set_position(epoch, step_in_epoch)
                steps = steps_in(epoch)
                if data_loader is None:
                    data_loader = torch.utils.data.DataLoader(
                        train_data, batch_sampler=sampler, num_workers=cfg.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0,
                        worker_init_fn=_worker_init, generator=torch.Generator())
                if bar is not None:
                    if task is not None:
                        bar.remove_task(task)
                    task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps,
                                        completed=step_in_epoch, loss=float("nan"))
                step = step_in_epoch - 1
                for step, (x, y, _rows) in enumerate(data_loader, start=step_in_epoch):
                    lr = learning_rate(cfg, cfg.progress(epoch, step, steps, global_step))
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    x = x.to(device, non_blocking=True, memory_format=fmt)
                    y = y.to(device, non_blocking=True)
                    with autocast:
                        loss, stats = objective.loss(net, x, y)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)               # clip true gradients, not scaled ones
                    if cfg.clip_grad > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    objective.before_optimizer_step(epoch)
                    scaler.step(optimizer)
                    scaler.update()
                    objective.after_step()
                    global_step += 1
                    n_img += len(y) * info.world_size
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0) + v.float()
                    n_sum += 1
                    last_of_epoch = step + 1 == steps
                    if global_step >= max_steps:
                        stopped = True
                    if global_step % cfg.log_every == 0 or last_of_epoch or stopped:
                        mean = reduce_stats(sums, n_sum)
                        sums, n_sum = {}, 0
                        if not math.isfinite(mean["loss"]):
                            raise CionError(f"loss is {mean['loss']} at step {global_step}. Fix: "
                                            "lower lr, use precision fp32 / bf16, or set clip_grad")
                        now = time.perf_counter()
                        record = {"step": global_step, "epoch": epoch,
                                  "progress": round(epoch + (step + 1) / steps, 6), "lr": lr,
                                  **mean, "images_per_s": n_img / max(now - t_last, 1e-9)}
                        t_last, n_img = now, 0
                        shown_loss = mean["loss"]
                        metrics.write(record)
                        for cb in callbacks:
                            cb(record)
                        if bar is None and info.is_main and progress:
                            log(f"epoch {epoch + 1} step {step + 1}/{steps}  loss "
                                f"{mean['loss']:.4f}  lr {lr:.2e}")
                    elif callbacks:
                        for cb in callbacks:
                            cb({"step": global_step, "epoch": epoch})
                    if bar is not None:      # the loss shown is the last logged one (no sync)
                        bar.update(task, advance=1, loss=shown_loss)
                    if not last_of_epoch and (global_step % cfg.checkpoint_every == 0 or stopped):
                        save(epoch, step + 1)
                    if stopped:
                        break
                if step + 1 >= steps:                           # the epoch is complete
                    epoch, step_in_epoch = epoch + 1, 0
                    due = evaluate and ((epoch == cfg.epochs and cfg.steps is None) or
                                        (cfg.eval_every and epoch % cfg.eval_every == 0))
                    if due:
                        t0 = time.perf_counter()
                        s = scores()
                        t_eval += time.perf_counter() - t0
                        entry = dict(s, epoch=epoch, step=global_step)
                        evals.append(entry)
                        metrics.write({"kind": "eval", **entry})
                        log(f"epoch {epoch}: {_scores_line(s)}")
                        if best is None or s["mAP"] > best["mAP"]:
                            best = entry
                            export("best.safetensors", True, epoch=epoch, mAP=s["mAP"])
                    save(epoch, 0)
                    export("backbone.safetensors", False, epoch=epoch)
    finally:
        metrics.close()

    # -- outputs --
    end_scores = evals[-1] if evals and evals[-1]["step"] == global_step else None
    if evaluate and end_scores is None:
        t0 = time.perf_counter()
        end_scores = dict(scores(), epoch=epoch, step=global_step)
        t_eval += time.perf_counter() - t0
        log(f"end: {_scores_line(end_scores)}")
    backbone_path = export("backbone.safetensors", False, epoch=epoch)
    model_path = export("model.safetensors", True, epoch=epoch)
    report = {
        "format": "cion-finetune-1", "mode": cfg.mode, "arch": cfg.arch, "dataset": ds.name,
        "reader": dataset, "version": ds.version, "data": str(data),
        "checkpoint": str(init) if init else None, "img_size": list(size),
        "config": cfg.to_dict(), "world_size": info.world_size, "precision": precision,
        "num_images": len(paths), "num_identities": int(len(identities)),
        "identities": [int(i) for i in identities], "steps": global_step, "epochs": epoch,
        "clusters": clusters,
        "seconds": {"evaluate": round(t_eval, 3), "total": round(time.perf_counter() - t_start, 3)},
        "backbone": str(backbone_path) if backbone_path else None, "model": str(model_path),
        "best_model": str(out / "best.safetensors") if best else None,
        "json": str(out / REPORT),
    }
    if evaluate:
        report["scores"] = {"start": start_scores, "end": end_scores, "best": best,
                            "history": evals}
    n_bad = tally.count
    report["bad_images"] = {"count": n_bad, "list": str(tally.list_path) if n_bad else None}
    if n_bad:
        log(f"{n_bad} unreadable training image(s) were "
            f"{'made outliers' if cfg.cluster else 'replaced by other images of their identity'}; "
            f"listed in {tally.list_path}")
    if info.is_main:
        atomic_write(out / REPORT, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    dist.barrier()
    return report


def cluster_readable(objective, features: torch.Tensor, unreadable: dict[int, str],
                     cfg: FinetuneConfig, epoch: int) -> dict:
    """Cluster Contrast's re-clustering (:func:`cion.finetune.recluster.recluster`) of the
    readable rows of (N, D) ``features`` only: the ``unreadable`` rows are outliers (label -1)
    for this epoch, so they are never sampled, and they do not shift anyone's neighbours."""
    from cion.finetune.recluster import recluster

    if not unreadable:
        return recluster(objective, features, cfg, epoch)
    n = len(features)
    good = np.setdiff1d(np.arange(n), np.fromiter(unreadable, np.int64, len(unreadable)))
    if len(good) < max(cfg.k1, cfg.min_samples):
        raise CionError(f"epoch {epoch + 1}: only {len(good)} of the {n} training images can be "
                        f"read; Cluster Contrast needs at least k1 = {cfg.k1}. Fix: repair the "
                        "images listed in bad_images.txt")
    stats = recluster(objective, features[torch.as_tensor(good)], cfg, epoch)
    labels = np.full(n, -1, np.int64)
    labels[good] = objective.labels
    objective.labels = labels
    return dict(stats, outliers=stats["outliers"] + len(unreadable), images=n,
                unreadable=len(unreadable))


def _worker_init(_):
    torch.set_num_threads(1)
