"""Pre-training configuration: one dataclass, YAML recipes in ``configs/pretrain/``.

A recipe sets any field below; the command line overrides a few (epochs, batch size, local
crops, sizes, seed, max steps). ``batch_size`` is the GLOBAL batch (all processes together) and
the learning rate is ``base_lr * batch_size / 256`` (DINO's rule).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from cion.errors import CionError
from cion.training.config import parse_size


@dataclass
class PretrainConfig:
    arch: str = "resnet50_ibn"
    epochs: int = 100
    batch_size: int = 256                 # global, all processes
    local_crops: int = 8
    global_size: tuple = (256, 128)       # (height, width)
    local_size: tuple = (128, 64)
    global_scale: tuple = (0.8, 1.0)
    local_scale: tuple = (0.05, 0.8)
    augment: dict = field(default_factory=dict)   # MultiCropConfig overrides (jitter_p, gray_p, ...)
    curriculum: Optional[list] = None     # [[epoch, K], ...]; None = 2/4/6/8 at 0/40/60/80 %
    # DINO head
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True
    head_bn: bool = False                 # BatchNorm1d in the head's MLP (DINO's use_bn_in_head)
    # optimisation (DINO defaults, as paper Sec. 4.1 prescribes)
    base_lr: float = 5e-4                 # per 256 images
    min_lr: float = 1e-6
    warmup_epochs: float = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    centering: str = "mean"               # mean (DINO, CION) | sinkhorn (DINOv2's Sinkhorn-Knopp)
    clip_grad: float = 3.0                # per-parameter gradient norm (DINO); 0 = off
    freeze_last_layer: int = 1            # epochs with the head's last layer frozen
    # execution
    precision: str = "auto"               # auto | fp32 | bf16 | fp16  (auto: bf16 on GPU, fp32 on CPU)
    channels_last: str = "auto"           # auto (CNNs on GPU) | true | false
    device: str = "auto"                  # auto | cpu | cuda
    augment_device: str = "auto"          # per-pixel augmentation: auto (= device) | cpu | cuda
    num_workers: int = 4
    seed: int = 0
    max_steps: Optional[int] = None       # stop after this many optimiser steps in total
    checkpoint_every: int = 200           # steps; also at every epoch end
    log_every: int = 10
    tensorboard: bool = True
    collapse_patience: int = 20           # consecutive collapsed logs before warning
    extra: dict = field(default_factory=dict)

    # fields that may differ between a run and its resumption
    RESUME_FREE = ("max_steps", "num_workers", "checkpoint_every", "log_every", "tensorboard",
                   "collapse_patience", "device", "augment_device")

    def __post_init__(self):
        for f in fields(self):   # YAML reads 8e-3 (no dot) as a string: accept it as a number
            value = getattr(self, f.name)
            if isinstance(f.default, float) and isinstance(value, str):
                try:
                    setattr(self, f.name, float(value))
                except ValueError:
                    raise CionError(f"{f.name} must be a number (got '{value}')") from None
        self.global_size = parse_size(self.global_size, "global_size")
        self.local_size = parse_size(self.local_size, "local_size")
        self.global_scale = tuple(float(v) for v in self.global_scale)
        self.local_scale = tuple(float(v) for v in self.local_scale)
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise CionError(f"precision must be auto, fp32, bf16 or fp16 (got '{self.precision}')")
        from cion.data.transforms import MultiCropConfig
        allowed = {f.name for f in fields(MultiCropConfig)} - {
            "global_size", "local_size", "local_crops", "global_scale", "local_scale", "extra"}
        bad = sorted(set(self.augment) - allowed)
        if bad:
            raise CionError(f"augment: unknown option(s) {bad}; known: {sorted(allowed)}")
        self.augment = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.augment.items()}
        if self.augment_device not in ("auto", "cpu", "cuda"):
            raise CionError(f"augment_device must be auto, cpu or cuda (got '{self.augment_device}')")
        if self.centering not in ("mean", "sinkhorn"):
            raise CionError(f"centering must be mean or sinkhorn (got '{self.centering}')")
        if str(self.channels_last).lower() not in ("auto", "true", "false"):
            raise CionError(f"channels_last must be auto, true or false (got '{self.channels_last}')")
        self.channels_last = str(self.channels_last).lower()
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise CionError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.local_crops < 0:
            raise CionError(f"local_crops must be >= 0 (got {self.local_crops})")
        if self.curriculum is None:
            from cion.data.sampler import default_curriculum
            self.curriculum = default_curriculum(self.epochs)
        from cion.data.sampler import check_curriculum
        self.curriculum = check_curriculum(self.curriculum)

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 256.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("global_size", "local_size", "global_scale", "local_scale"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "PretrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CionError(f"{source}: unknown option(s) {unknown}. Fix: remove them; known "
                            f"options are {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "PretrainConfig":
        """Load a YAML recipe; ``overrides`` that are not None replace its values."""
        import yaml

        path = Path(path)
        if not path.exists():
            raise CionError(f"{path}: no such config file. Fix: see configs/pretrain/ for recipes")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise CionError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise CionError(f"{path}: expected a mapping of option: value")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, str(path))

    def differences(self, other: "PretrainConfig") -> list[str]:
        """Fields (outside RESUME_FREE) whose values differ."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in self.RESUME_FREE and a[k] != b[k]]
