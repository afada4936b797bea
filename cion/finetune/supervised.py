"""Supervised fine-tuning, the "BNNeck baseline" (TransReID / strong-baseline style, paper Sec. 4.1;
docs/finetuning.md): backbone + BN neck, ID loss (label-smoothed cross-entropy on the logits after the
neck) + batch-hard triplet loss (on the features before the neck), P x K identity batches,
flip / pad-crop / random-erasing augmentation, linear warm-up then cosine decay of the learning
rate to 1 % of its peak.

    from cion.finetune import SupervisedConfig, finetune_on_market
    result = finetune_on_market(backbone, "data/market1501", SupervisedConfig(steps=2000))
    result.model.eval()   # returns the pre-neck features: ready for zero_shot_map / extract

Differences from the paper's recipe, by default: steps instead of epochs, Adam 3.5e-4 with
weight decay 5e-4 (the strong baseline's optimiser; SGD momentum 0.9 is ``optimizer="sgd"``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from cion.errors import CionError
from cion.finetune.bnneck import BNNeckModel
from cion.finetune.losses import batch_hard_triplet, smoothed_cross_entropy
from cion.finetune.sampler import PKSampler
from cion.finetune.transforms import TrainAugment, decode_images
from cion.training.schedules import cosine

OPTIMIZERS = ("adam", "sgd")


@dataclass
class SupervisedConfig:
    steps: int = 600                      # optimiser steps
    batch_size: int = 32                  # P * K images
    instances: int = 4                    # K, images per identity in a batch
    lr: float = 3.5e-4                    # peak learning rate
    weight_decay: float = 5e-4
    warmup_steps: int = 50                # linear warm-up from lr * 0.01 (<= steps)
    optimizer: str = "adam"               # adam | sgd (momentum 0.9)
    image_size: tuple = (256, 128)        # (height, width)
    label_smoothing: float = 0.1
    margin: float = 0.3                   # triplet hinge margin (unused when soft_margin)
    soft_margin: bool = False
    erasing_p: float = 0.5
    seed: int = 0
    log_every: int = 50                   # steps between progress lines / history entries
    threads: int | None = None            # torch CPU threads during training (None: unchanged)
    device: str = "cpu"                   # where training runs (e.g. "cuda"); the model returns on CPU

    @property
    def min_lr(self) -> float:
        return self.lr * 0.01

    def check(self) -> "SupervisedConfig":
        """Raise :class:`CionError` naming the first bad option and a valid value."""
        def bad(name, why):
            raise CionError(f"SupervisedConfig.{name} = {getattr(self, name)!r}: {why}")

        for name in ("steps", "batch_size", "instances", "warmup_steps", "log_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                bad(name, "must be an integer")
        if self.steps < 1:
            bad("steps", "must be >= 1")
        if self.instances < 2:
            bad("instances", "must be >= 2 (the triplet loss needs a positive of each image "
                "in the batch), e.g. 4")
        if self.batch_size < 2 * self.instances or self.batch_size % self.instances:
            bad("batch_size", f"must be a multiple of instances ({self.instances}) holding at "
                f"least 2 identities, e.g. {8 * self.instances}")
        if not self.lr > 0:
            bad("lr", "must be > 0, e.g. 3.5e-4")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if self.warmup_steps < 0:
            bad("warmup_steps", "must be >= 0, e.g. 50 (a run shorter than the warm-up "
                "spends all its steps warming up)")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"must be one of {OPTIMIZERS}")
        try:
            h, w = (int(v) for v in self.image_size)
        except (TypeError, ValueError):
            bad("image_size", "must be (height, width), e.g. (256, 128)")
        if h < 8 or w < 8:
            bad("image_size", "height and width must be >= 8 pixels, e.g. (256, 128)")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", "must be in [0, 1), e.g. 0.1")
        if not self.soft_margin and not self.margin > 0:
            bad("margin", "must be > 0 (or set soft_margin=True), e.g. 0.3")
        if not 0 <= self.erasing_p <= 1:
            bad("erasing_p", "must be a probability in [0, 1]")
        if self.log_every < 1:
            bad("log_every", "must be >= 1")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            bad("threads", "must be None (leave torch's setting) or an integer >= 1")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            bad("device", "must be a torch device name, e.g. 'cpu' or 'cuda'")
        if device.type == "cuda" and not torch.cuda.is_available():
            bad("device", "asks for CUDA but torch sees no GPU here; use 'cpu'")
        return self


@dataclass
class FinetuneResult:
    """``model``: the trained :class:`BNNeckModel`, left in eval mode (its forward returns the
    pre-neck features); ``history``: one dict per logged step with ``step`` (optimiser steps
    done), ``loss``, ``ce``, ``triplet`` (means over the steps since the previous entry),
    ``lr`` (of the last of those steps) and ``seconds`` (since the start of training);
    ``identities``: (C,) the dataset identity of each classifier class. The model is on the CPU
    whatever ``cfg.device`` trained it."""
    model: BNNeckModel
    history: list[dict] = field(default_factory=list)
    identities: np.ndarray | None = None


def _training_rows(dataset: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Absolute paths (N,), labels 0..C-1 (N,) of the rows with identity >= 0, and the original
    identity of each label (C,)."""
    if not isinstance(dataset, pd.DataFrame):
        raise CionError(f"finetune_supervised: dataset must be a pandas DataFrame, got "
                        f"{type(dataset).__name__}")
    missing = [c for c in ("path", "identity") if c not in dataset.columns]
    if missing:
        raise CionError(f"finetune_supervised: dataset lacks column(s) {missing}. Fix: pass a "
                        "table with 'path' (image file) and 'identity' (integer >= 0), e.g. "
                        "read_market1501(root).train")
    try:
        identity = dataset["identity"].to_numpy(np.int64)
    except (TypeError, ValueError):
        raise CionError("finetune_supervised: the 'identity' column must hold integers "
                        f"(got dtype {dataset['identity'].dtype}). Fix: map identities to "
                        "integers >= 0") from None
    df = dataset[identity >= 0]
    root = Path(dataset.attrs.get("root", "."))
    paths = [str(p if Path(p).is_absolute() else root / p) for p in df["path"].astype(str)]
    absent = [p for p in paths if not Path(p).is_file()]
    if absent:
        raise CionError(f"finetune_supervised: {len(absent)} of {len(paths)} image files do not "
                        f"exist (e.g. {absent[:2]}; relative paths resolve against "
                        f"dataset.attrs['root'] = {str(root)!r}). Fix: the paths or attrs['root']")
    ids = df["identity"].to_numpy(np.int64)
    uniq, labels = np.unique(ids, return_inverse=True)
    if len(uniq) < 2:
        raise CionError(f"finetune_supervised: the training rows hold {len(uniq)} identity "
                        f"({len(df)} images with identity >= 0); the ID and triplet losses need "
                        "at least 2. Fix: train on a set with more identities")
    return paths, labels.astype(np.int64), uniq


def _optimizer(params, cfg: SupervisedConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def finetune_supervised(backbone: nn.Module, dataset: pd.DataFrame,
                        cfg: SupervisedConfig | None = None,
                        log: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune ``backbone`` with ID + triplet losses on the labelled images of ``dataset``.

    Args:
        backbone: (B, 3, H, W) -> (B, D) module with ``feature_dim``; trained in place.
        dataset: one row per image with ``path`` (absolute, or relative to
            ``dataset.attrs['root']``, else to the working directory) and ``identity``; rows with
            identity < 0 are dropped, the rest relabelled 0..C-1 (C classes). Pass only the
            training split.
        cfg: the recipe (default :class:`SupervisedConfig`).
        log: receives one progress line every ``cfg.log_every`` steps.

    All training images are decoded once into memory, uint8 (N, H, W, 3) at ``cfg.image_size``
    (N x H x W x 3 bytes): meant for the small sets this runs on (Market-1501 at 256x128 is
    1.25 GB); large datasets should stream images through a DataLoader instead.
    Deterministic given ``cfg.seed`` (on CPU; for one number of threads).
    """
    cfg = (cfg or SupervisedConfig()).check()
    paths, labels, identities = _training_rows(dataset)
    n_classes = int(labels.max()) + 1
    sampler = PKSampler(labels, cfg.batch_size // cfg.instances, cfg.instances, seed=cfg.seed)
    size = tuple(int(v) for v in cfg.image_size)
    log(f"fine-tuning on {len(paths)} images of {n_classes} identities at {size[0]}x{size[1]}: "
        f"{cfg.steps} steps of {sampler.p} ids x {sampler.k} images, {cfg.optimizer} lr {cfg.lr:g}")
    if sampler.singletons:
        log(f"note: {sampler.singletons} identities have a single image; their batch "
            "positives are copies of it")
    threads_before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        images = decode_images(paths, size)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng([cfg.seed, 1])        # augmentation stream (sampler: seed)
        augment = TrainAugment(erasing_p=cfg.erasing_p)
        device = torch.device(cfg.device)
        model = BNNeckModel(backbone, n_classes).to(device).train()
        opt = _optimizer([p for p in model.parameters() if p.requires_grad], cfg)
        labels_t = torch.from_numpy(labels)
        history, sums, n_sum = [], np.zeros(3), 0
        start = time.perf_counter()
        for step, idx in enumerate(sampler, start=1):
            lr = cosine(step - 1, cfg.steps, cfg.lr, cfg.min_lr,
                        warmup=min(cfg.warmup_steps, cfg.steps), warmup_start=cfg.min_lr)
            for group in opt.param_groups:
                group["lr"] = lr
            x = augment(images[idx], rng).to(device, non_blocking=True)
            y = labels_t[idx].to(device, non_blocking=True)
            features, logits = model(x)
            ce = smoothed_cross_entropy(logits, y, cfg.label_smoothing)
            tri = batch_hard_triplet(features, y, cfg.margin, cfg.soft_margin)
            loss = ce + tri
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += (loss.item(), ce.item(), tri.item())
            n_sum += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                mean = sums / n_sum
                entry = {"step": step, "loss": float(mean[0]), "ce": float(mean[1]),
                         "triplet": float(mean[2]), "lr": lr,
                         "seconds": time.perf_counter() - start}
                history.append(entry)
                log(f"step {step}/{cfg.steps}  loss {mean[0]:.3f} (ce {mean[1]:.3f}, triplet "
                    f"{mean[2]:.3f})  lr {lr:.2e}  {entry['seconds']:.0f}s")
                sums[:], n_sum = 0.0, 0
            if step == cfg.steps:
                break
    finally:
        torch.set_num_threads(threads_before)
    model.cpu().eval()
    return FinetuneResult(model, history, identities)


def finetune_on_market(backbone: nn.Module, market_root: str | Path,
                       cfg: SupervisedConfig | None = None,
                       log: Callable[[str], None] = print) -> FinetuneResult:
    """:func:`finetune_supervised` on ``market_root/bounding_box_train`` (a Market-1501 layout;
    identities 0 (distractors) and -1 (junk) are excluded)."""
    from cion.data.readers import read_market1501

    train = read_market1501(market_root).train
    train = train[train["identity"] > 0]
    if len(train) == 0:
        raise CionError(f"{Path(market_root) / 'bounding_box_train'}: no labelled training "
                        "images (identity > 0). Fix: point to a Market-1501 layout folder")
    return finetune_supervised(backbone, train, cfg, log)
