"""The pre-training loop: identity-guided self-distillation (CION) of any ReIDZoo backbone.

Read it like DINO's ``train_one_epoch``: per step, evaluate the schedules, run the teacher on
the two global views and the student on all views, compute the identity-guided loss, step the
optimiser (gradients unscaled before clipping), update the teacher by EMA, log, checkpoint.

    from cion.pretrain import PretrainConfig, pretrain
    result = pretrain("identities.parquet", PretrainConfig(arch="resnet50_ibn"), "runs/r50")
    result.backbone   # runs/r50/backbone.safetensors, loadable by create_model(arch, checkpoint=...)

Run it under ``torchrun --nproc_per_node N`` unchanged (gloo on CPU, nccl on GPU). Calling it
again with the same ``out_dir`` resumes from ``out_dir/checkpoint.pt`` exactly where the last
checkpoint was taken (a run killed at any moment ends with the same weights as an
uninterrupted one): sampler position and curriculum, RNG states, optimiser, gradient scaler,
teacher, centre and collapse monitor are restored; schedules are functions of the position.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from cion import distributed as dist
from cion.errors import CionError
from cion.pretrain.backbone import build_backbone, feature_width, is_cnn
from cion.pretrain.checkpoint import (load_checkpoint, rng_state, save_backbone, save_checkpoint,
                                      set_rng_state)
from cion.pretrain.config import PretrainConfig
from cion.pretrain.head import DINOHead, MultiCropNet
from cion.pretrain.loss import IdentityDINOLoss
from cion.pretrain.monitor import CollapseMonitor
from cion.pretrain.schedules import schedule_values


@dataclass
class PretrainResult:
    """What a run produced (paths) and a summary of its metrics."""
    out_dir: Path
    backbone: Path
    checkpoint: Path
    metrics: Path
    config: Path
    steps: int
    epoch: int
    first_loss: float | None = None
    last_loss: float | None = None
    collapsed: bool = False
    history: list = field(default_factory=list)


# ---- building blocks ---------------------------------------------------------------------------
def param_groups(model: nn.Module) -> list[dict]:
    """DINO's groups: weight decay on weights, none on biases and 1-D (norm) parameters."""
    reg, no_reg = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_reg if name.endswith(".bias") or p.ndim <= 1 else reg).append(p)
    return [{"params": reg}, {"params": no_reg, "weight_decay": 0.0}]


@torch.no_grad()
def clip_gradients(params: Iterable[torch.Tensor], clip: float) -> None:
    """DINO's clipping: each parameter's gradient norm is clipped to ``clip`` separately."""
    grads = [p.grad for p in params if p.grad is not None]
    if clip <= 0 or not grads:
        return
    norms = torch._foreach_norm(grads)
    scale = [torch.clamp(clip / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, scale)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    t = list(teacher.parameters())
    s = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1.0 - momentum)


def training_step(student: MultiCropNet, student_ddp: nn.Module, teacher: MultiCropNet,
                  loss_fn: IdentityDINOLoss, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, views: list[torch.Tensor], ids: torch.Tensor,
                  sched: dict, clip_grad: float, freeze_last_layer: bool,
                  autocast=None) -> dict:
    """One optimisation step of CION; returns the loss statistics (0-d tensors).

    ``views``: 2 global then L local (B, 3, H, W) batches; ``ids``: (B,) identity labels;
    ``sched``: the scheduled values (``teacher_temp``, ``momentum``; lr and weight decay are
    already in the optimiser). ``student_ddp`` is the DDP-wrapped student (or the student).
    """
    with autocast if autocast is not None else contextlib.nullcontext():
        with torch.no_grad():
            teacher_out = teacher(views[:2])          # the teacher sees the global views only
        student_out = student_ddp(views)
    loss, stats = loss_fn(student_out, teacher_out, ids, sched["teacher_temp"])
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)                        # clip true gradients, not scaled ones
    clip_gradients(student.parameters(), clip_grad)
    if freeze_last_layer:
        for p in student.head.last_layer.parameters():
            p.grad = None
    scaler.step(optimizer)
    scaler.update()
    ema_update(teacher, student, sched["momentum"])
    return stats


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise CionError("precision fp16 needs a CUDA GPU (its gradient scaler is GPU-only). "
                        "Fix: use precision bf16 or fp32 on CPU")
    return precision


def build_networks(cfg: PretrainConfig, device: torch.device, info: dist.DistInfo):
    """Student (DDP-wrapped when distributed) and teacher, identical at start."""
    torch.manual_seed(cfg.seed)  # same initialisation on every rank
    backbone = build_backbone(cfg.arch, cfg.global_size)
    width = feature_width(backbone, cfg.global_size)
    head = DINOHead(width, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.norm_last_layer,
                    use_bn=cfg.head_bn)
    channels_last = (cfg.channels_last == "true" or
                     (cfg.channels_last == "auto" and device.type == "cuda"
                      and is_cnn(cfg.arch, backbone)))
    student = MultiCropNet(backbone, head, channels_last=channels_last)
    student, synced = dist.maybe_sync_batchnorm(student, info)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    student = student.to(device, memory_format=fmt)
    teacher = teacher.to(device, memory_format=fmt)
    return student, teacher, {"width": width, "channels_last": channels_last, "sync_bn": synced}


def _labels_and_paths(data) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    from cion.data.manifest import read_manifest, resolve_paths, validate

    if isinstance(data, (str, os.PathLike)):
        df = read_manifest(data)
    elif isinstance(data, pd.DataFrame):
        root = data.attrs.get("root")
        df = validate(data, "<manifest DataFrame>")
        df.attrs["root"] = root or "."
    else:
        raise CionError(f"data must be a manifest path or a DataFrame, got {type(data).__name__}")
    labels = df["identity"].to_numpy(np.int64)
    return df, resolve_paths(df), labels


def _worker_init(_):
    torch.set_num_threads(1)


class MetricsLog:
    """metrics.jsonl (+ TensorBoard) on rank 0; on resume drops lines past the checkpoint."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, resume_step: int):
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"pretrain/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---- the run -----------------------------------------------------------------------------------
def pretrain(data, config: PretrainConfig | dict | None, out_dir: str | os.PathLike, *,
             progress: bool = True, callbacks: Iterable[Callable[[dict], None]] = (),
             log: Callable[[str], None] | None = None,
             max_bad_share: float = 0.01) -> PretrainResult:
    """Pre-train ``config.arch`` on the identities of a manifest; resume if ``out_dir`` has a
    checkpoint.

    Args:
        data: manifest path or DataFrame; its ``identity`` column defines the positives
            (-1 rows are skipped). Instance-level DINO = one identity per image (use a
            curriculum of K = 1); tracklet-level = tracklet ids as identities.
        config: :class:`PretrainConfig` (or a dict of its fields).
        out_dir: run directory (created). Holds checkpoint.pt, backbone.safetensors,
            metrics.jsonl, tensorboard/, config.json.
        progress: show a rich progress bar (rank 0).
        callbacks: functions called after every optimiser step with a dict of the step's
            metrics (``step``, ``epoch``, ``loss`` ...).
        log: function for one-line messages (default: rich console on rank 0).
        max_bad_share: unreadable images are replaced by another image of their identity and
            listed in ``out_dir/bad_images.txt``; past this share of the images the run stops
            (:mod:`cion.data.images`).

    Returns:
        :class:`PretrainResult`.
    """
    cfg = config if isinstance(config, PretrainConfig) else PretrainConfig.from_dict(dict(config or {}))
    out = Path(out_dir)
    dev_name = None if cfg.device == "auto" else cfg.device
    info = dist.init(dev_name)
    device = info.device
    console = None
    if log is None:
        from rich.console import Console
        console = Console(stderr=True)
        log = (lambda msg: console.print(f"[pretrain] {msg}", highlight=False)) if info.is_main \
            else (lambda msg: None)
    precision = resolve_precision(cfg.precision, device)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"

    # -- resume? --
    state = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if state is not None:
        saved = PretrainConfig.from_dict(state["config"], str(ckpt_path))
        diff = cfg.differences(saved)
        if diff:
            raise CionError(f"{ckpt_path}: this run directory was started with different options "
                            f"({', '.join(f'{k}: {getattr(saved, k)!r} -> {getattr(cfg, k)!r}' for k in diff)}). "
                            "Fix: repeat the original options to resume, or use a new --out")

    # -- data --
    from cion.data.sampler import IdentityBatchSampler
    from cion.data.images import BadImageTally, ReplaceBadImages
    from cion.data.transforms import MultiCropAugment, MultiCropConfig, MultiCropDataset

    df, paths, labels = _labels_and_paths(data)
    sampler = IdentityBatchSampler(labels, cfg.batch_size, cfg.curriculum, cfg.seed,
                                   rank=info.rank, world_size=info.world_size)
    augment = MultiCropAugment(MultiCropConfig(
        global_size=cfg.global_size, local_size=cfg.local_size, local_crops=cfg.local_crops,
        global_scale=cfg.global_scale, local_scale=cfg.local_scale, **cfg.augment))
    if np.bincount(np.unique(labels[labels >= 0], return_counts=True)[1]).argmax() == 1 \
            and min(k for _, k in cfg.curriculum) > 1:
        log("most identities have one image: each is repeated K times per batch; for "
            "instance-level DINO set curriculum: [[0, 1]]")

    # -- networks, loss, optimiser --
    student, teacher, net_info = build_networks(cfg, device, info)
    if info.world_size > 1 and dist.has_batchnorm(student) and not net_info["sync_bn"]:
        log("BatchNorm statistics stay per process on CPU (SyncBatchNorm is GPU-only)")
    student_ddp = dist.wrap_ddp(student, info)
    loss_fn = IdentityDINOLoss(cfg.out_dim, 2, cfg.student_temp, cfg.center_momentum,
                               cfg.centering).to(device)
    optimizer = torch.optim.AdamW(param_groups(student), lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    monitor = CollapseMonitor(cfg.out_dim, cfg.collapse_patience)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
                if precision in ("bf16", "fp16") else contextlib.nullcontext())

    epoch, step_in_epoch, global_step = 0, 0, 0
    if state is not None:
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        loss_fn.center.copy_(state["center"].to(device))
        monitor.load_state_dict(state["monitor"])
        sampler.load_state_dict(state["sampler"])
        epoch, step_in_epoch = state["sampler"]["epoch"], state["sampler"]["step"]
        global_step = int(state["global_step"])
        rngs = state["rng"]
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
        else:
            log(f"checkpoint has RNG states of {len(rngs)} processes, this run has "
                f"{info.world_size}: model RNG (dropout) is not restored exactly")
        log(f"resuming from {ckpt_path}: epoch {epoch}, step {step_in_epoch}, "
            f"{global_step} steps done")
    else:
        torch.manual_seed(cfg.seed + 7919 * (info.rank + 1))  # per-rank stream (dropout etc.)
    if info.is_main:
        (out / "config.json").write_text(json.dumps(dict(cfg.to_dict(), precision_used=precision,
                                                        world_size=info.world_size, **net_info),
                                                   indent=2))
    metrics = MetricsLog(out, info.is_main, cfg.tensorboard, global_step)

    # an unreadable image is replaced by another of its identity and listed (cion.data.images)
    bad = BadImageTally(int((labels >= 0).sum()), out / "bad_images.txt", max_share=max_bad_share,
                        what="pretrain", fresh=state is None and info.is_main)
    dataset = ReplaceBadImages(MultiCropDataset(paths, augment), labels, cfg.seed, bad, paths)
    dist.barrier()                                   # no rank lists an image before rank 0 reset it
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0,
        worker_init_fn=_worker_init, generator=torch.Generator())  # own generator: keep global RNG untouched

    def checkpoint(next_epoch: int, next_step: int) -> None:
        rngs = dist.all_gather_object(rng_state())
        if info.is_main:
            save_checkpoint({
                "config": cfg.to_dict(), "global_step": global_step, "world_size": info.world_size,
                "sampler": dict(sampler.state_dict(), epoch=next_epoch, step=next_step),
                "student": student.state_dict(), "teacher": teacher.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "center": loss_fn.center.detach().cpu(), "monitor": monitor.state_dict(),
                "rng": rngs}, ckpt_path)
        dist.barrier()

    def export_backbone() -> Path:
        path = out / "backbone.safetensors"
        if info.is_main:
            save_backbone(teacher.backbone, path, {"arch": cfg.arch, "step": global_step,
                                                   "source": "cion pretrain (teacher)"})
        return path

    history: list[dict] = []
    max_steps = cfg.max_steps if cfg.max_steps is not None else math.inf
    bar = _progress(progress and info.is_main)
    task = None
    stopped = global_step >= max_steps
    t_last, n_last = time.perf_counter(), 0
    student.train()
    teacher.train()  # DINO: BatchNorm of the teacher uses batch statistics
    try:
        with (bar if bar is not None else contextlib.nullcontext()):
            while epoch < cfg.epochs and not stopped:
                sampler.set_position(epoch, step_in_epoch)
                steps = sampler.steps_in_epoch(epoch)
                if bar is not None:
                    if task is not None:
                        bar.remove_task(task)
                    task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs} K={sampler.k(epoch)}",
                                        total=steps, completed=step_in_epoch, loss=float("nan"))
                step = step_in_epoch - 1
                for step, (glob, loc, ids) in enumerate(loader, start=step_in_epoch):
                    sched = schedule_values(cfg, epoch + step / steps)
                    for i, group in enumerate(optimizer.param_groups):
                        group["lr"] = sched["lr"]
                        if i == 0:
                            group["weight_decay"] = sched["weight_decay"]
                    glob = glob.to(device, non_blocking=True)
                    loc = loc.to(device, non_blocking=True)
                    ids = ids.to(device)
                    views = list(glob.unbind(1)) + list(loc.unbind(1))

                    stats = training_step(student, student_ddp, teacher, loss_fn, optimizer,
                                          scaler, views, ids, sched, cfg.clip_grad,
                                          freeze_last_layer=epoch < cfg.freeze_last_layer,
                                          autocast=autocast)
                    if not torch.isfinite(stats["loss"]):
                        raise CionError(f"loss is {stats['loss'].item()} at step {global_step}. Fix: "
                                        "lower base_lr, use precision fp32/bf16, or raise clip_grad")
                    global_step += 1

                    record = {"step": global_step, "epoch": epoch, "progress": epoch + (step + 1) / steps,
                              "k": sampler.k(epoch), **{k: float(v) for k, v in stats.items()}, **sched}
                    n_last += ids.numel() * info.world_size
                    for cb in callbacks:
                        cb(record)
                    last = step + 1 == steps or global_step >= max_steps
                    if global_step % cfg.log_every == 0 or global_step == 1 or last:
                        now = time.perf_counter()
                        record["images_per_s"] = n_last / max(now - t_last, 1e-9)
                        t_last, n_last = now, 0
                        history.append(record)
                        metrics.write(record)
                        warning = monitor.update(record["teacher_entropy"], record["batch_entropy"],
                                                 record["kl"])
                        if warning:
                            log(f"WARNING: {warning}")
                    if bar is not None:
                        bar.update(task, advance=1, loss=record["loss"])
                    if global_step >= max_steps:
                        stopped = True
                    if step + 1 < steps and (global_step % cfg.checkpoint_every == 0 or stopped):
                        checkpoint(epoch, step + 1)
                    if stopped:
                        break
                if step + 1 >= steps:      # epoch finished
                    epoch, step_in_epoch = epoch + 1, 0
                    checkpoint(epoch, 0)
                    export_backbone()
    finally:
        metrics.close()
    backbone_path = export_backbone()
    dist.barrier()
    losses = [h["loss"] for h in history]
    if info.is_main and history:
        log(f"done: {global_step} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
            f"teacher backbone: {backbone_path}")
    if info.is_main and bad.count:
        log(f"{bad.count} unreadable image(s) were replaced by other images of their identity; "
            f"listed in {bad.list_path}")
    return PretrainResult(out_dir=out, backbone=backbone_path, checkpoint=ckpt_path,
                          metrics=out / "metrics.jsonl", config=out / "config.json",
                          steps=global_step, epoch=epoch,
                          first_loss=losses[0] if losses else None,
                          last_loss=losses[-1] if losses else None,
                          collapsed=monitor.warned, history=history)


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), transient=False)
