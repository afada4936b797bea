"""The pre-training loop: identity-guided self-distillation (CION) of any ReIDZoo backbone.

Read it like DINO's ``main_dino.py``: :func:`setup_run` builds the data pipeline, networks,
loss and optimiser; :func:`restore` loads a checkpoint; :func:`train_one_epoch` runs the steps:
evaluate the schedules, finish the batch's views on the augmentation device (the DataLoader
workers send uint8 crops, :func:`cion.data.transforms.finish_views`), run the teacher on the two
global views and the student on all views, compute the identity-guided loss (Eq. 9), step the
optimiser (gradients unscaled before clipping), update the teacher by EMA, log, checkpoint.
A step makes no host round-trip: its statistics stay device tensors until the log step
(``log_every``), where one transfer brings them, and the NaN check, to the host (docs/gpu.md).

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
from cion.models.backbone import build_backbone, feature_width, is_cnn
from cion.models.checkpoint import save_backbone
from cion.pretrain.checkpoint import (load_training_state, rng_state, save_training_state,
                                      set_rng_state)
from cion.pretrain.config import PretrainConfig
from cion.pretrain.head import DINOHead, MultiCropNet
from cion.pretrain.loss import IdentityDINOLoss
from cion.pretrain.monitor import CollapseMonitor
from cion.training.logging import MetricsLog, progress_bar
from cion.training.precision import resolve_precision
from cion.training.schedules import schedule_values


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


# ---- the run: setup, restore, one epoch -----------------------------------------------------
def resolve_augment_device(name: str, device: torch.device) -> torch.device:
    """Where the per-pixel half of the augmentation runs: ``auto`` = the training device."""
    if name == "auto":
        return device
    if name == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise CionError(f"augment_device {name} needs training on a CUDA GPU (this run trains on "
                        f"{device}). Fix: set augment_device auto or cpu")
    return device


@dataclass
class Run:
    """Everything one pre-training run holds; made by :func:`setup_run`, advanced by
    :func:`train_one_epoch`. ``epoch``, ``step_in_epoch`` and ``global_step`` are the position
    of the next step."""
    cfg: PretrainConfig
    info: dist.DistInfo
    out: Path
    log: Callable[[str], None]
    precision: str
    sampler: object
    loader: torch.utils.data.DataLoader
    augment: object                    # MultiCropAugment: .photometric is the per-pixel half
    augment_device: torch.device
    student: MultiCropNet
    student_ddp: nn.Module
    teacher: MultiCropNet
    loss_fn: IdentityDINOLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    monitor: CollapseMonitor
    autocast: object
    net_info: dict
    bad_images: object = None          # BadImageTally: unreadable images replaced so far
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"


def setup_run(data, cfg: PretrainConfig, out: Path, log: Callable[[str], None] | None, *,
              max_bad_share: float = 0.01, resuming: bool = False) -> Run:
    """Processes, data pipeline, networks, loss and optimiser of a fresh run (not restored).

    An unreadable image is replaced by another of its identity and listed in
    ``out/bad_images.txt`` (:mod:`cion.data.images`); past ``max_bad_share`` of the images the
    run stops. ``resuming`` keeps the list of the interrupted run."""
    dev_name = None if cfg.device == "auto" else cfg.device
    info = dist.init(dev_name)
    device = info.device
    if log is None:
        from rich.console import Console
        console = Console(stderr=True)
        log = (lambda msg: console.print(f"[pretrain] {msg}", highlight=False)) if info.is_main \
            else (lambda msg: None)
    precision = resolve_precision(cfg.precision, device)
    augment_device = resolve_augment_device(cfg.augment_device, device)
    out.mkdir(parents=True, exist_ok=True)

    from cion.data.images import BadImageTally, ReplaceBadImages
    from cion.data.sampler import IdentityBatchSampler
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
    # workers: decode + crop + flip, uint8 (a quarter of float32's bytes to copy); the
    # per-pixel half runs batched on augment_device (see finish_views)
    bad = BadImageTally(int((labels >= 0).sum()), out / "bad_images.txt", max_share=max_bad_share,
                        what="pretrain", fresh=not resuming and info.is_main)
    dataset = ReplaceBadImages(MultiCropDataset(paths, augment, uint8=True), labels, cfg.seed, bad,
                               paths)
    dist.barrier()                                   # no rank lists an image before rank 0 reset it
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler,
        num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0, worker_init_fn=_worker_init,
        generator=torch.Generator())  # own generator: keep global RNG untouched

    student, teacher, net_info = build_networks(cfg, device, info)
    if info.world_size > 1 and dist.has_batchnorm(student) and not net_info["sync_bn"]:
        log("BatchNorm statistics stay per process on CPU (SyncBatchNorm is GPU-only)")
    loss_fn = IdentityDINOLoss(cfg.out_dim, 2, cfg.student_temp, cfg.center_momentum,
                               cfg.centering).to(device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
                if precision in ("bf16", "fp16") else contextlib.nullcontext())
    return Run(cfg=cfg, info=info, out=out, log=log, precision=precision, sampler=sampler,
               loader=loader, augment=augment, augment_device=augment_device,
               student=student, student_ddp=dist.wrap_ddp(student, info), teacher=teacher,
               loss_fn=loss_fn, optimizer=torch.optim.AdamW(param_groups(student), lr=cfg.lr),
               scaler=torch.amp.GradScaler("cuda", enabled=precision == "fp16"),
               monitor=CollapseMonitor(cfg.out_dim, cfg.collapse_patience), autocast=autocast,
               net_info=net_info, bad_images=bad)


def restore(run: Run, state: dict | None) -> None:
    """Load a checkpoint's state into ``run`` (or seed the per-rank stream of a fresh run)."""
    info = run.info
    if state is None:
        torch.manual_seed(run.cfg.seed + 7919 * (info.rank + 1))  # per-rank stream (dropout etc.)
        return
    run.student.load_state_dict(state["student"])
    run.teacher.load_state_dict(state["teacher"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.loss_fn.center.copy_(state["center"].to(run.device))
    run.monitor.load_state_dict(state["monitor"])
    run.sampler.load_state_dict(state["sampler"])
    run.epoch, run.step_in_epoch = state["sampler"]["epoch"], state["sampler"]["step"]
    run.global_step = int(state["global_step"])
    rngs = state["rng"]
    if len(rngs) == info.world_size:
        set_rng_state(rngs[info.rank])
    else:
        run.log(f"checkpoint has RNG states of {len(rngs)} processes, this run has "
                f"{info.world_size}: model RNG (dropout) is not restored exactly")
    run.log(f"resuming from {run.checkpoint_path}: epoch {run.epoch}, step {run.step_in_epoch}, "
            f"{run.global_step} steps done")


def _check_resumable(cfg: PretrainConfig, ckpt_path: Path) -> dict | None:
    state = load_training_state(ckpt_path) if ckpt_path.exists() else None
    if state is not None:
        saved = PretrainConfig.from_dict(state["config"], str(ckpt_path))
        diff = cfg.differences(saved)
        if diff:
            raise CionError(f"{ckpt_path}: this run directory was started with different options "
                            f"({', '.join(f'{k}: {getattr(saved, k)!r} -> {getattr(cfg, k)!r}' for k in diff)}). "
                            "Fix: repeat the original options to resume, or use a new --out")
    return state


def save_run(run: Run, next_epoch: int, next_step: int) -> None:
    """Checkpoint ``run`` (rank 0 writes; every rank contributes its RNG state)."""
    rngs = dist.all_gather_object(rng_state())
    if run.info.is_main:
        save_training_state({
            "config": run.cfg.to_dict(), "global_step": run.global_step,
            "world_size": run.info.world_size,
            "sampler": dict(run.sampler.state_dict(), epoch=next_epoch, step=next_step),
            "student": run.student.state_dict(), "teacher": run.teacher.state_dict(),
            "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
            "center": run.loss_fn.center.detach().cpu(), "monitor": run.monitor.state_dict(),
            "rng": rngs}, run.checkpoint_path)
    dist.barrier()


def export_backbone(run: Run) -> Path:
    path = run.out / "backbone.safetensors"
    if run.info.is_main:
        save_backbone(run.teacher.backbone, path, {"arch": run.cfg.arch, "step": run.global_step,
                                                   "source": "cion pretrain (teacher)"})
    return path


class PendingLosses:
    """Per-step losses kept on the device until a host round-trip is due anyway (a log line,
    a checkpoint): then one transfer checks them all for NaN / inf."""

    def __init__(self):
        self.steps: list[int] = []
        self.values: list[torch.Tensor] = []

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.steps.append(step)
        self.values.append(loss.detach())

    def check(self) -> None:
        if not self.values:
            return
        values = torch.stack(self.values).tolist()
        steps, self.steps, self.values = self.steps, [], []
        for step, v in zip(steps, values):
            if not math.isfinite(v):
                raise CionError(f"loss is {v} at step {step}. Fix: lower base_lr, use precision "
                                "fp32/bf16, or raise clip_grad")


def train_one_epoch(run: Run, max_steps: float, metrics: MetricsLog, bar, callbacks,
                    clock: dict) -> bool:
    """Steps of epoch ``run.epoch`` from ``run.step_in_epoch`` on (checkpointing on the way,
    and at the epoch's end); returns True when ``max_steps`` stopped the run.

    Nothing in a step waits for the device: statistics stay 0-d device tensors until a log
    step (every ``log_every``) or a checkpoint, where they (and the losses since the last
    check, for the NaN check) come to the host in two small transfers.
    """
    cfg, info, sampler, device = run.cfg, run.info, run.sampler, run.device
    from cion.data.transforms import finish_views

    epoch = run.epoch
    sampler.set_position(epoch, run.step_in_epoch)
    steps = sampler.steps_in_epoch(epoch)
    task = None
    if bar is not None:
        if clock.get("task") is not None:      # keep only the current epoch's bar
            bar.remove_task(clock["task"])
        task = clock["task"] = bar.add_task(
            f"epoch {epoch + 1}/{cfg.epochs} K={sampler.k(epoch)}", total=steps,
            completed=run.step_in_epoch, loss=float("nan"))
    pending = PendingLosses()
    stopped = False
    step = run.step_in_epoch - 1
    for step, (glob_u8, loc_u8, glob_par, loc_par, ids) in enumerate(run.loader,
                                                                     start=run.step_in_epoch):
        sched = schedule_values(cfg, epoch + step / steps)
        for i, group in enumerate(run.optimizer.param_groups):
            group["lr"] = sched["lr"]
            if i == 0:
                group["weight_decay"] = sched["weight_decay"]
        views = (finish_views(run.augment.photometric, glob_u8, glob_par, run.augment_device, device)
                 + finish_views(run.augment.photometric, loc_u8, loc_par, run.augment_device, device))
        stats = training_step(run.student, run.student_ddp, run.teacher, run.loss_fn,
                              run.optimizer, run.scaler, views, ids, sched, cfg.clip_grad,
                              freeze_last_layer=epoch < cfg.freeze_last_layer,
                              autocast=run.autocast)   # ids stay on the CPU (see the loss)
        run.global_step += 1
        pending.add(run.global_step, stats["loss"])
        record = {"step": run.global_step, "epoch": epoch, "progress": epoch + (step + 1) / steps,
                  "k": sampler.k(epoch), **stats, **sched}        # stats: 0-d device tensors
        clock["images"] += ids.numel() * info.world_size
        for cb in callbacks:
            cb(record)
        last = step + 1 == steps or run.global_step >= max_steps
        if run.global_step % cfg.log_every == 0 or run.global_step == 1 or last:
            pending.check()
            values = torch.stack([stats[k].detach().float() for k in stats]).tolist()
            record = dict(record, **dict(zip(stats, values)))   # host round-trip of a log step
            now = time.perf_counter()
            record["images_per_s"] = clock["images"] / max(now - clock["t"], 1e-9)
            clock["t"], clock["images"] = now, 0
            run.history.append(record)
            metrics.write(record)
            warning = run.monitor.update(record["teacher_entropy"], record["batch_entropy"],
                                         record["kl"])
            if warning:
                run.log(f"WARNING: {warning}")
            if bar is not None:
                bar.update(task, loss=record["loss"])
        if bar is not None:
            bar.update(task, advance=1)
        stopped = run.global_step >= max_steps
        if step + 1 < steps and (run.global_step % cfg.checkpoint_every == 0 or stopped):
            pending.check()
            save_run(run, epoch, step + 1)
        if stopped:
            break
    pending.check()
    if step + 1 >= steps:      # epoch finished
        run.epoch, run.step_in_epoch = epoch + 1, 0
        save_run(run, run.epoch, 0)
        export_backbone(run)
    else:
        run.step_in_epoch = step + 1
    return stopped


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
            metrics (``step``, ``epoch``, ``loss`` ...). Its loss statistics are 0-d tensors
            on the training device (formatting or ``float()`` reads one: a host sync, so read
            them only now and then); ``result.history`` and metrics.jsonl hold floats.
        log: function for one-line messages (default: rich console on rank 0).
        max_bad_share: unreadable images are replaced by another image of their identity and
            listed in ``out_dir/bad_images.txt``; past this share of the images the run stops
            (:mod:`cion.data.images`).

    Returns:
        :class:`PretrainResult`.
    """
    cfg = config if isinstance(config, PretrainConfig) else PretrainConfig.from_dict(dict(config or {}))
    out = Path(out_dir)
    state = _check_resumable(cfg, out / "checkpoint.pt")
    run = setup_run(data, cfg, out, log, max_bad_share=max_bad_share, resuming=state is not None)
    restore(run, state)
    info = run.info
    if info.is_main:
        (out / "config.json").write_text(json.dumps(dict(
            cfg.to_dict(), precision_used=run.precision, world_size=info.world_size,
            augment_device_used=str(run.augment_device), **run.net_info), indent=2))
    metrics = MetricsLog(out, info.is_main, cfg.tensorboard, run.global_step, prefix="pretrain")

    max_steps = cfg.max_steps if cfg.max_steps is not None else math.inf
    bar = progress_bar(progress and info.is_main)
    stopped = run.global_step >= max_steps
    clock = {"t": time.perf_counter(), "images": 0}
    run.student.train()
    run.teacher.train()  # DINO: BatchNorm of the teacher uses batch statistics
    try:
        with (bar if bar is not None else contextlib.nullcontext()):
            while run.epoch < cfg.epochs and not stopped:
                stopped = train_one_epoch(run, max_steps, metrics, bar, callbacks, clock)
    finally:
        metrics.close()
    backbone_path = export_backbone(run)
    dist.barrier()
    losses = [h["loss"] for h in run.history]
    if info.is_main and run.history:
        run.log(f"done: {run.global_step} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
                f"teacher backbone: {backbone_path}")
    if info.is_main and run.bad_images.count:
        run.log(f"{run.bad_images.count} unreadable image(s) were replaced by other images of "
                f"their identity; listed in {run.bad_images.list_path}")
    return PretrainResult(out_dir=out, backbone=backbone_path, checkpoint=run.checkpoint_path,
                          metrics=out / "metrics.jsonl", config=out / "config.json",
                          steps=run.global_step, epoch=run.epoch,
                          first_loss=losses[0] if losses else None,
                          last_loss=losses[-1] if losses else None,
                          collapsed=run.monitor.warned, history=run.history)


