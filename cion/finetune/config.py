"""Fine-tuning configuration: one dataclass for the four modes, YAML recipes in
``configs/finetune/`` (the paper's protocols, docs/finetuning.md), ``--set key=value`` overrides.

Modes (paper Sec. 4.1 and 4.3):

* ``supervised``: TransReID-style BNNeck (ID loss after the neck, batch-hard triplet before it);
* ``mgn``: Multiple Granularity Network on a ResNet / ResNet-IBN (the paper's headline R50-IBN);
* ``usl``: Cluster Contrast on the unlabelled train split of the target set, from the
  pre-trained backbone;
* ``uda``: the same, from a backbone fine-tuned with labels on a source set
  (``--source-checkpoint``).

``batch_size`` is the GLOBAL batch (all processes together). Lengths are in epochs; an epoch is
one pass over the training images (``iters_per_epoch: null``) or a fixed number of iterations
(Cluster Contrast: 200 on Market-1501, 400 on MSMT17).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from cion.errors import CionError
from cion.training.config import parse_size

MODES = ("supervised", "mgn", "usl", "uda")
CLUSTER_MODES = ("usl", "uda")


@dataclass
class FinetuneConfig:
    mode: str = "supervised"
    arch: str = "resnet50_ibn"
    img_size: tuple = (256, 128)          # (height, width), training and test
    # length
    epochs: int = 120
    iters_per_epoch: Optional[int] = None  # None: one pass over the images per epoch
    steps: Optional[int] = None           # run length in optimiser steps instead: the schedule's
                                          # epochs are scaled onto these steps, training stops there
    max_steps: Optional[int] = None       # stop after this many optimiser steps (schedule unchanged)
    # batches
    batch_size: int = 64                  # global, all processes
    instances: int = 4                    # K images per identity (per cluster) in a batch
    # optimiser and schedule
    optimizer: str = "sgd"                # sgd (momentum) | adam
    lr: float = 4e-4
    momentum: float = 0.9                 # SGD
    weight_decay: float = 1e-4
    schedule: str = "cosine"              # cosine (warm-up, hold, cosine) | step (x gamma every step_size)
    warmup_epochs: float = 20
    warmup_factor: float = 0.01           # warm-up starts at lr * warmup_factor
    hold_epochs: float = 0                # cosine: constant lr until this epoch (MGN: 30)
    min_lr: float = 1.6e-6                # cosine: end value
    step_size: float = 20                 # step: epochs between decays
    gamma: float = 0.1                    # step: decay factor
    clip_grad: float = 0.0                # global gradient norm; 0 = off (after unscaling)
    # losses (supervised, mgn)
    label_smoothing: float = 0.1
    soft_margin: bool = True              # soft-margin batch-hard triplet
    margin: float = 0.3                   # hard margin when soft_margin is false
    id_weight: float = 1.0
    triplet_weight: float = 1.0
    freeze_epochs: int = 0                # mgn: backbone + branches frozen this many epochs
    mgn_classifier: str = "circle"        # mgn: circle (CircleSoftmax s 64 m 0.35, the authors') | linear
    # augmentation
    flip_p: float = 0.5
    pad: Optional[int] = None             # None: 10 pixels at height 256, scaled
    erasing_p: float = 0.5
    # cluster contrast (usl, uda)
    k1: int = 30
    k2: int = 6
    eps: float = 0.6
    min_samples: int = 4
    memory_momentum: float = 0.2
    temperature: float = 0.05
    memory_update: str = "hard"           # hard (the authors') | plain
    # evaluation and outputs
    eval_every: int = 10                  # epochs between evaluations (0: only at the end)
    checkpoint_every: int = 200           # steps; also at every epoch end
    log_every: int = 20
    tensorboard: bool = True
    # execution
    precision: str = "auto"               # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    channels_last: str = "auto"           # auto (CNNs on GPU) | true | false
    sync_bn: bool = False                 # BatchNorm over the global batch under DDP
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    num_workers: int = 4
    in_memory: bool = False               # decode the train images once into RAM (small sets)
    seed: int = 0
    extra: dict = field(default_factory=dict)

    #: fields that may differ between a run and its resumption
    RESUME_FREE = ("max_steps", "num_workers", "checkpoint_every", "log_every", "tensorboard",
                   "device", "in_memory", "eval_every")

    def __post_init__(self):
        for f in fields(self):   # YAML reads 3.5e-4 as a float but 4e-4 (no dot) as a string
            value = getattr(self, f.name)
            if isinstance(f.default, float) and isinstance(value, (str, int)) \
                    and not isinstance(value, bool):
                try:
                    setattr(self, f.name, float(value))
                except ValueError:
                    raise CionError(f"{f.name} must be a number (got '{value}')") from None
        self.img_size = parse_size(self.img_size, "img_size")
        self.check()

    def check(self) -> "FinetuneConfig":
        """Raise :class:`CionError` naming the first bad option and a valid value."""
        def bad(name, why):
            raise CionError(f"{name} = {getattr(self, name)!r}: {why}")

        def integer(name, low, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                bad(name, f"must be an integer >= {low}")

        if self.mode not in MODES:
            bad("mode", f"must be one of {', '.join(MODES)}")
        h, w = self.img_size
        if h < 16 or w < 8:
            bad("img_size", "must be at least 16x8 pixels, e.g. 256x128")
        for name, low in (("epochs", 1), ("batch_size", 2), ("instances", 1), ("k1", 1),
                          ("k2", 1), ("min_samples", 1), ("eval_every", 0),
                          ("checkpoint_every", 1), ("log_every", 1), ("num_workers", 0),
                          ("freeze_epochs", 0), ("seed", 0)):
            integer(name, low)
        integer("iters_per_epoch", 1, allow_none=True)
        integer("max_steps", 1, allow_none=True)
        integer("steps", 1, allow_none=True)
        if self.batch_size % self.instances:
            bad("batch_size", f"must be a multiple of instances ({self.instances}), e.g. "
                f"{16 * self.instances}")
        if self.batch_size < 2 * self.instances:
            bad("batch_size", f"must hold at least 2 identities of {self.instances} images")
        if self.optimizer not in ("sgd", "adam"):
            bad("optimizer", "must be sgd or adam")
        if self.schedule not in ("cosine", "step"):
            bad("schedule", "must be cosine or step")
        for name in ("lr",):
            if not getattr(self, name) > 0:
                bad(name, "must be > 0, e.g. 3.5e-4")
        for name in ("weight_decay", "min_lr", "warmup_epochs", "hold_epochs", "clip_grad",
                     "margin", "id_weight", "triplet_weight"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if not 0 < self.warmup_factor <= 1:
            bad("warmup_factor", "must be in (0, 1], e.g. 0.01")
        if not self.step_size > 0 or not 0 < self.gamma <= 1:
            bad("step_size" if not self.step_size > 0 else "gamma",
                "step schedule needs step_size > 0 epochs and 0 < gamma <= 1")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", "must be in [0, 1), e.g. 0.1")
        if not self.soft_margin and not self.margin > 0:
            bad("margin", "must be > 0 (or set soft_margin: true)")
        for name in ("flip_p", "erasing_p"):
            if not 0 <= getattr(self, name) <= 1:
                bad(name, "must be a probability in [0, 1]")
        if self.pad is not None and (not isinstance(self.pad, int) or self.pad < 0):
            bad("pad", "must be null (scaled with the height) or an integer >= 0")
        if not self.eps > 0:
            bad("eps", "must be > 0 (a Jaccard distance in (0, 1)), e.g. 0.6")
        if not 0 <= self.memory_momentum < 1:
            bad("memory_momentum", "must be in [0, 1), e.g. 0.2")
        if not self.temperature > 0:
            bad("temperature", "must be > 0, e.g. 0.05")
        if self.mgn_classifier not in ("circle", "linear"):
            bad("mgn_classifier", "must be circle or linear")
        if self.memory_update not in ("hard", "plain"):
            bad("memory_update", "must be hard or plain")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            bad("precision", "must be auto, fp32, bf16 or fp16")
        import re
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            bad("device", "must be auto, cpu, cuda or cuda:N")
        self.channels_last = str(self.channels_last).lower()
        if self.channels_last not in ("auto", "true", "false"):
            bad("channels_last", "must be auto, true or false")
        return self

    def progress(self, epoch: int, step: int, steps_in_epoch: int, global_step: int) -> float:
        """Schedule position in epochs: ``epoch + step / steps_in_epoch``, or with ``steps``
        set, ``global_step / steps * epochs``."""
        if self.steps is not None:
            return global_step / self.steps * self.epochs
        return epoch + step / steps_in_epoch

    @property
    def cluster(self) -> bool:
        return self.mode in CLUSTER_MODES

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["img_size"] = list(d["img_size"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "FinetuneConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            import difflib
            hints = [m for u in unknown for m in difflib.get_close_matches(u, known, n=1)]
            raise CionError(f"{source}: unknown option(s) {unknown}"
                            f"{' (did you mean ' + ', '.join(hints) + '?)' if hints else ''}. "
                            "Fix: remove them; the options are listed in docs/finetuning.md")
        try:
            return cls(**d)
        except TypeError as err:
            raise CionError(f"{source}: {err}") from None

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict | None = None,
             **defaults) -> "FinetuneConfig":
        """Recipe = ``defaults`` (non-None values, e.g. from named CLI options), then the YAML
        file ``path`` on top, then ``overrides`` (``--set``) on top of both."""
        data = {k: v for k, v in defaults.items() if v is not None}
        source = "options"
        if path is not None:
            import yaml

            path = Path(path)
            if not path.is_file():
                raise CionError(f"--config {path}: no such file. Fix: pick a recipe from "
                                "configs/finetune/")
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as err:
                first = str(err).splitlines()[0]
                raise CionError(f"--config {path}: not valid YAML ({first})") from None
            if not isinstance(loaded, dict):
                raise CionError(f"--config {path}: expected a mapping of option: value")
            data.update(loaded)
            source = str(path)
        data.update(overrides or {})
        return cls.from_dict(data, source)

    def differences(self, other: "FinetuneConfig") -> list[str]:
        """Fields (outside RESUME_FREE) whose values differ."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in self.RESUME_FREE and a[k] != b.get(k)]


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["lr=3.5e-4", "img_size=[384, 128]"]`` -> ``{"lr": 3.5e-4, "img_size": [384, 128]}``
    (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CionError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set lr=3.5e-4")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise CionError(f"--set {pair!r}: the value is not valid YAML") from None
    return out


#: defaults of each mode when no recipe is given (the Market-1501 recipes, 256x128)
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "supervised": {},
    "mgn": dict(optimizer="adam", lr=3.5e-4, weight_decay=5e-4, epochs=60, warmup_epochs=10,
                hold_epochs=30, min_lr=7.7e-7, freeze_epochs=10, batch_size=64, instances=16,
                img_size=(384, 128)),
    "usl": dict(optimizer="adam", lr=3.5e-4, weight_decay=5e-4, epochs=50, schedule="step",
                step_size=20, gamma=0.1, warmup_epochs=0, iters_per_epoch=200, batch_size=256,
                instances=16, eps=0.6, eval_every=10),
    "uda": dict(optimizer="adam", lr=3.5e-4, weight_decay=5e-4, epochs=50, schedule="step",
                step_size=20, gamma=0.1, warmup_epochs=0, iters_per_epoch=200, batch_size=256,
                instances=16, eps=0.6, eval_every=10),
}
